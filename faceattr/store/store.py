"""The run store: runs, epochs, per-attribute metrics, models and scoring jobs in a SQL database.

The run folder stays the source of truth; the store is an index over it that the Airflow tasks
keep current (`sync_run_dir` after each stage) and `faceattr runs` reads. Every write is an
upsert on the table's natural key, so a retried task never duplicates a row. Beside this module:
schema.py (the tables), values.py (the value checks), sync.py (run folder -> rows).

The URL and the engine come from connection.py (FACEATTR_DB_URL, default a SQLite file under
FACEATTR_HOME; a reader never creates the store). The schema is created and upgraded by the Alembic
migrations in faceattr/store/migrations; a new schema change is a new file in
faceattr/store/migrations/versions.

Only SQLAlchemy is imported at module level (Alembic when a store is opened): DAG files may import
this at parse time. Which model and epoch are the run's is faceattr.run.chosen's rule.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from faceattr.attributes import ATTRIBUTES, SPLITS
from faceattr.data.versions import run_version
from faceattr.fsutil import read_json
from faceattr.run.chosen import best_so_far, selected_model
from faceattr.run.layout import RunLayout
from faceattr.store import values as v
from faceattr.store.connection import StoreError, default_url, make_engine, missing, one_line, quiet_alembic
from faceattr.store.schema import (
    MIGRATIONS_DIR, TABLES, VERSION_TABLE, AttributeMetric, Base, Epoch, Model, Run, ScoringJob,
)
from faceattr.store.sync import read_run_dir

STATES = v.STATES

# Alembic keeps its migration context in module globals: one upgrade at a time per process.
# Taken before the database transaction, so it never waits while holding a database lock.
_UPGRADE_LOCK = threading.Lock()

log = logging.getLogger(__name__)


class RunNotFoundError(ValueError):
    """A run id that the store does not hold."""


# -- the store ----------------------------------------------------------------------------------
class Store:
    """The run store at one database URL; the schema is brought to the latest migration on open."""

    def __init__(self, url: str | None = None, *, create: bool = True):
        """create=False: a command that only reads; a store that does not exist (no file, or no
        faceattr schema) is a StoreMissingError and nothing is created."""
        self.engine = make_engine(url or default_url(), create=create)
        self.url = self.engine.url.render_as_string(hide_password=True)
        try:
            if self._pending_migrations(create):
                self.upgrade()
        except StoreError:
            self.engine.dispose()
            raise
        except SQLAlchemyError as exc:
            self.engine.dispose()
            raise StoreError(f"run store {self.url}: {one_line(exc)}") from None

    @classmethod
    def from_env(cls, *, create: bool = True) -> "Store":
        return cls(default_url(), create=create)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # -- schema ---------------------------------------------------------------------------------
    def _alembic_config(self, connection: Connection | None = None):
        # Alembic only when a store is opened: DAG files import this module at parse time, and open none.
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        config.attributes["connection"] = connection
        return config

    def _pending_migrations(self, create: bool = True) -> bool:
        quiet_alembic()
        from alembic.migration import MigrationContext  # alembic: see _alembic_config
        from alembic.script import ScriptDirectory

        scripts = ScriptDirectory.from_config(self._alembic_config())
        with self.engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
            current = set(context.get_current_heads())
        if not current and not create:  # an empty database: a reader does not make it a store
            raise missing(self.url)
        unknown = current - {rev.revision for rev in scripts.walk_revisions()}
        if unknown:
            raise StoreError(
                f"run store {self.url}: schema revision {', '.join(sorted(unknown))} is newer than this "
                "faceattr's migrations; upgrade faceattr"
            )
        return current != set(scripts.get_heads())

    def upgrade(self) -> None:
        """`alembic upgrade head` on this database, in one transaction."""
        quiet_alembic()
        from alembic import command  # alembic: see _alembic_config

        log.info("run store %s: bringing the schema to the latest migration", self.url)
        with _UPGRADE_LOCK, self.write() as conn:
            if conn.dialect.name == "postgresql":
                # Two tasks opening a fresh database at once: the second waits, then finds it done.
                # (On SQLite, write()'s BEGIN IMMEDIATE does the same.)
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(hashtext('faceattr.store.store.upgrade'))")
            command.upgrade(self._alembic_config(conn), "head")

    # -- writes ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction. On SQLite it begins IMMEDIATE, so writers queue one after another;
        on PostgreSQL a writer that reads before it decides takes an advisory lock (registry.py)."""
        with self.engine.connect() as conn:
            conn.execution_options(faceattr_write=True)
            with conn.begin():
                yield conn

    def _upsert(self, conn: Connection, table: Any, rows: list[dict[str, Any]], keys: Iterable[str],
                update: Iterable[str]) -> None:
        """INSERT ... ON CONFLICT (keys) DO UPDATE SET only the `update` columns."""
        if not rows:
            return
        # postgresql otherwise: make_engine accepts nothing else
        insert = sqlite.insert if conn.dialect.name == "sqlite" else postgresql.insert
        stmt = insert(table.__table__)
        update = list(update)
        if update:
            stmt = stmt.on_conflict_do_update(
                index_elements=list(keys), set_={name: stmt.excluded[name] for name in update}
            )
        else:
            stmt = stmt.on_conflict_do_nothing(index_elements=list(keys))
        conn.execute(stmt, rows)

    def _require_run(self, conn: Connection, run_id: str) -> None:
        if conn.execute(select(Run.id).where(Run.id == run_id)).first() is None:
            raise RunNotFoundError(f"run {run_id!r} is not in the run store {self.url}; upsert_run it first")

    def upsert_run(self, run_id: str, *, run_dir: str | os.PathLike, config: dict, status: str,
                   dag_run_id: str | None = None, started_at: datetime | str | None = None,
                   finished_at: datetime | str | None = None) -> None:
        """Insert or update a run; None optional arguments leave the stored value as it is."""
        for name, value in (("run_dir", run_dir), ("config", config), ("status", status)):
            if value is None:
                raise ValueError(f"run {run_id!r}: {name} is required")
        values = self._run_values(run_id, run_dir=run_dir, config=config, status=status,
                                  dag_run_id=dag_run_id, started_at=started_at, finished_at=finished_at)
        with self.write() as conn:
            self._upsert(conn, Run, [values], ["id"], [k for k in values if k != "id"])

    @staticmethod
    def _run_values(run_id: str, **fields: Any) -> dict[str, Any]:
        checks = {
            "run_dir": lambda name, value: str(Path(v.nonempty(name, value)).resolve()),
            "config": v.json_object,
            "status": v.state,
            "dag_run_id": v.nonempty,
            "started_at": v.utc_time,
            "finished_at": v.utc_time,
        }
        return {"id": v.nonempty("run_id", run_id), **v.checked(fields, checks, f"run {run_id!r}")}

    def upsert_epoch(self, run_id: str, epoch: int, **figures: float | int | None) -> None:
        """Insert or update one epoch's figures (names in v.EPOCH_FIGURES); others stay as they are."""
        row = {"run_id": run_id, "epoch": v.epoch_number(epoch),
               **v.checked(figures, v.EPOCH_FIGURES, f"run {run_id!r} epoch {epoch!r}")}
        with self.write() as conn:
            self._require_run(conn, run_id)
            self._upsert(conn, Epoch, [row], ["run_id", "epoch"], [k for k in row if k not in ("run_id", "epoch")])

    def upsert_attribute_metrics(self, run_id: str, epoch: int, split: str,
                                 attributes: dict[str, dict[str, float]]) -> None:
        """One row per attribute: {"accuracy", "balanced_accuracy", "f1"} (and optional "majority_baseline")."""
        rows = v.attribute_rows(run_id, epoch, split, attributes, where=f"run {run_id!r} {split} epoch {epoch!r}")
        with self.write() as conn:
            self._require_run(conn, run_id)
            self._upsert_attribute_rows(conn, rows)

    def _upsert_attribute_rows(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        # Group by the set of columns given: one executemany needs the same keys on every row.
        by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for row in rows:
            by_columns.setdefault(tuple(row), []).append(row)
        keys = ["run_id", "epoch", "split", "attribute"]
        for columns, group in by_columns.items():
            self._upsert(conn, AttributeMetric, group, keys, [c for c in columns if c not in keys])

    def upsert_model(self, run_id: str, epoch: int, path: str | os.PathLike, *, val_mean_accuracy: float,
                     test_mean_accuracy: float | None) -> None:
        """Record a run's model. Whether it is published and which model is the champion are the
        registry's decisions (faceattr.store.registry); recording never changes them."""
        values = {
            "run_id": v.nonempty("run_id", run_id),
            "epoch": v.epoch_number(epoch),
            "path": str(Path(v.nonempty("path", path)).resolve()),
            "val_mean_accuracy": v.fraction("val_mean_accuracy", val_mean_accuracy),
        }
        if test_mean_accuracy is not None:
            values["test_mean_accuracy"] = v.fraction("test_mean_accuracy", test_mean_accuracy)
        with self.write() as conn:
            self._require_run(conn, run_id)
            self._upsert(conn, Model, [values], ["run_id", "epoch"],
                         [k for k in values if k not in ("run_id", "epoch")])

    def upsert_scoring_job(self, job_id: str, **fields: Any) -> None:
        """Insert or update a scoring job (field names in v.JOB_FIELDS); None leaves a field as it is."""
        values = {"id": v.nonempty("job_id", job_id), **v.checked(fields, v.JOB_FIELDS, f"scoring job {job_id!r}")}
        with self.write() as conn:
            model_key = (values.get("model_run_id"), values.get("model_epoch"))
            if None not in model_key and conn.execute(
                select(Model.run_id).where(Model.run_id == model_key[0], Model.epoch == model_key[1])
            ).first() is None:
                raise ValueError(f"scoring job {job_id!r}: no model of run {model_key[0]!r} epoch "
                                 f"{model_key[1]} in the run store {self.url}")
            self._upsert(conn, ScoringJob, [values], ["id"], [k for k in values if k != "id"])

    def sync_run_dir(self, run_id: str, run_dir: str | os.PathLike, **run_fields: Any) -> dict[str, Any]:
        """Upsert everything a run folder's JSON files say: config, per-epoch train/val/test figures,
        per-attribute metrics and the selected model. Idempotent; one transaction.

        run_fields are upsert_run's (status, dag_run_id, started_at, finished_at; config overrides
        RUN/config.json). A new run without a status is recorded as running; fields not given
        (and a config.json not yet written) leave the stored values as they are.
        """
        layout = RunLayout(run_dir)
        if not layout.root.is_dir():
            raise FileNotFoundError(f"{layout.root}: run folder not found")
        if run_fields.get("config") is None and layout.config.is_file():
            run_fields["config"] = read_json(layout.config)  # absent: keep what the store has
        run = self._run_values(run_id, run_dir=layout.root, **run_fields)
        version = run_version(layout.root)
        if version is not None:  # the data version split.csv was made from (prune keeps it)
            run["data_version"] = version
        rows = read_run_dir(run_id, layout.root)
        epochs, attribute_rows, model = rows.epochs, rows.attribute_metrics, rows.model

        with self.write() as conn:
            self._upsert(conn, Run, [run], ["id"], [k for k in run if k != "id"])
            for figures in epochs.values():
                self._upsert(conn, Epoch, [figures], ["run_id", "epoch"],
                             [k for k in figures if k not in ("run_id", "epoch")])
            self._upsert_attribute_rows(conn, attribute_rows)
            if model is not None:
                model["run_id"] = run_id
                # Registry state (published, champion) is a decision, not a file: a sync never changes it.
                self._upsert(conn, Model, [model], ["run_id", "epoch"],
                             [k for k in model if k not in ("run_id", "epoch")])
        return {
            "run_id": run_id,
            "epochs": len(epochs),
            "attribute_metrics": len(attribute_rows),
            "model_epoch": None if model is None else model["epoch"],
        }

    # -- reads ----------------------------------------------------------------------------------
    @staticmethod
    def selected_model(run: dict[str, Any]) -> dict[str, Any] | None:
        """The run's model (a row of run["models"], by faceattr.run.chosen.selected_model's rule), or None."""
        return selected_model(run["run_dir"], run["models"])

    def current_model(self) -> dict[str, Any] | None:
        """The champion (the model `champion`/`latest` scoring uses), or None before the first publish."""
        with self.engine.connect() as conn:
            row = champion_row(conn)
        if row is None:
            return None
        row["current"] = row.pop("is_current")
        return row

    def runs(self) -> list[dict[str, Any]]:
        """Every run, newest first, with its epoch count and best epoch."""
        with Session(self.engine) as session:
            epochs: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for row in session.scalars(select(Epoch).order_by(Epoch.epoch)):
                epochs[row.run_id].append(_epoch_dict(row))
            models: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for row in session.scalars(select(Model).order_by(Model.epoch)):
                models[row.run_id].append(_model_dict(row))
            result = [
                {**_row_dict(run), "epochs": len(epochs[run.id]),
                 **best_so_far(_row_dict(run), models[run.id], epochs[run.id])}
                for run in session.scalars(select(Run))
            ]
        never = datetime.min.replace(tzinfo=timezone.utc)
        return sorted(result, key=lambda r: (r["started_at"] or never, r["id"]), reverse=True)

    def run(self, run_id: str) -> dict[str, Any]:
        """One run with its epochs, models and attribute metrics (split, epoch, official attribute order)."""
        with Session(self.engine) as session:
            run = session.get(Run, run_id)
            if run is None:
                known = session.scalars(select(Run.id).order_by(Run.id).limit(20)).all()
                raise RunNotFoundError(
                    f"run {run_id!r} is not in the run store {self.url}; "
                    f"known runs: {', '.join(known) if known else 'none'}"
                )
            epochs = [_epoch_dict(e) for e in session.scalars(
                select(Epoch).where(Epoch.run_id == run_id).order_by(Epoch.epoch))]
            models = [_model_dict(m) for m in session.scalars(
                select(Model).where(Model.run_id == run_id).order_by(Model.epoch))]
            metrics = [_metric_dict(m) for m in session.scalars(
                select(AttributeMetric).where(AttributeMetric.run_id == run_id))]
            order = {name: i for i, name in enumerate(ATTRIBUTES)}
            split_order = {name: i for i, name in enumerate(SPLITS)}
            metrics.sort(key=lambda m: (split_order.get(m["split"], 9), m["epoch"],
                                        order.get(m["attribute"], len(order)), m["attribute"]))
            return {**_row_dict(run), "epochs": epochs, "models": models, "attribute_metrics": metrics,
                    **best_so_far(_row_dict(run), models, epochs)}

    def count(self, table: str) -> int:
        """Rows in one of the store's tables (for checks and tests)."""
        if table not in TABLES:
            raise ValueError(f"table: {table!r} is not one of {', '.join(TABLES)}")
        with Session(self.engine) as session:
            return session.scalar(select(func.count()).select_from(TABLES[table]))

    def data_versions_in_use(self) -> set[str]:
        """The data versions the store's runs were split from: `faceattr data prune` keeps them."""
        with Session(self.engine) as session:
            return set(session.scalars(select(Run.data_version).where(Run.data_version.is_not(None))))

    def scoring_job(self, job_id: str) -> dict[str, Any] | None:
        with Session(self.engine) as session:
            job = session.get(ScoringJob, job_id)
            return None if job is None else _row_dict(job)


def champion_row(conn: Connection) -> dict[str, Any] | None:
    """The champion's models row (column names as in the table), or None: the one champion lookup,
    for Store.current_model and the registry."""
    row = conn.execute(select(Model).where(Model.is_current)).mappings().first()
    return None if row is None else dict(row)


# -- row -> dict -----------------------------------------------------------------------
def _row_dict(row: Base) -> dict[str, Any]:
    return {column.key: getattr(row, column.key) for column in row.__table__.columns}


def _epoch_dict(epoch: Epoch) -> dict[str, Any]:
    values = _row_dict(epoch)
    del values["run_id"]
    return values


def _model_dict(model: Model) -> dict[str, Any]:
    values = _row_dict(model)
    values["current"] = values.pop("is_current")
    return values


def _metric_dict(metric: AttributeMetric) -> dict[str, Any]:
    values = _row_dict(metric)
    del values["run_id"]
    return values
