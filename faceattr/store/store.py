"""The run store: runs, epochs, per-attribute metrics, models and scoring jobs in a SQL database.

The run folder stays the source of truth; the store is an index over it that the Airflow tasks
keep current (`sync_run_dir` after each stage) and `faceattr runs` reads. Every write is an
upsert on the table's natural key, so a retried task never duplicates a row.

The URL comes from FACEATTR_DB_URL; the default is a SQLite file, $FACEATTR_HOME/faceattr.db
(FACEATTR_HOME defaults to ./data). The schema is created and upgraded by the Alembic migrations
in faceattr/store/migrations; a new schema change is a new file in faceattr/store/migrations/versions.

Only SQLAlchemy is imported at module level: DAG files may import this at parse time.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import threading
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

from sqlalchemy import (
    JSON, Boolean, DateTime, Float, ForeignKey, ForeignKeyConstraint, Index, Integer, String, Text,
    create_engine, event, false, func, select, text,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.types import TypeDecorator

from faceattr.fsutil import read_json
from faceattr.attributes import ATTRIBUTES
from faceattr.run.layout import RunLayout

DB_URL_ENV = "FACEATTR_DB_URL"
HOME_ENV = "FACEATTR_HOME"
DB_FILE = "faceattr.db"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Not Alembic's default name: the store may share a database with Airflow's own metadata.
VERSION_TABLE = "faceattr_alembic_version"

# Airflow's DagRunState / TaskInstanceState names, so a task can pass its state through.
STATES = ("queued", "running", "success", "failed")
SPLITS = ("train", "val", "test")

# Alembic keeps its migration context in module globals: one upgrade at a time per process.
# Taken before the database transaction, so it never waits while holding a database lock.
_UPGRADE_LOCK = threading.Lock()

log = logging.getLogger(__name__)


class StoreError(RuntimeError):
    """The store cannot be reached or its schema does not match this faceattr."""


class RunNotFoundError(ValueError):
    """A run id that the store does not hold."""


# -- schema (the migrations create it; these classes describe it) ------------------------------
class UTCDateTime(TypeDecorator):
    """Timestamps stored as naive UTC and read back as aware UTC, alike on SQLite and PostgreSQL."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=timezone.utc)


class Base(DeclarativeBase):
    pass


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String, primary_key=True)
    dag_run_id: Mapped[str | None] = mapped_column(String)
    config: Mapped[dict] = mapped_column(JSON, default=lambda: {})
    status: Mapped[str] = mapped_column(String, default="running", server_default="running")
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    run_dir: Mapped[str] = mapped_column(Text)


class Epoch(Base):
    __tablename__ = "epochs"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    train_loss: Mapped[float | None] = mapped_column(Float)
    train_accuracy: Mapped[float | None] = mapped_column(Float)
    train_images: Mapped[int | None] = mapped_column(Integer)
    seconds: Mapped[float | None] = mapped_column(Float)
    images_per_second: Mapped[float | None] = mapped_column(Float)
    val_mean_accuracy: Mapped[float | None] = mapped_column(Float)
    val_majority_baseline: Mapped[float | None] = mapped_column(Float)
    test_mean_accuracy: Mapped[float | None] = mapped_column(Float)


class AttributeMetric(Base):
    __tablename__ = "attribute_metrics"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    split: Mapped[str] = mapped_column(String, primary_key=True)
    attribute: Mapped[str] = mapped_column(String, primary_key=True)
    accuracy: Mapped[float | None] = mapped_column(Float)
    balanced_accuracy: Mapped[float | None] = mapped_column(Float)
    f1: Mapped[float | None] = mapped_column(Float)
    majority_baseline: Mapped[float | None] = mapped_column(Float)


class Model(Base):
    __tablename__ = "models"
    # At most one current model, enforced by the database, not only by upsert_model.
    __table_args__ = (
        Index(
            "models_one_current", "is_current", unique=True,
            sqlite_where=text("is_current"), postgresql_where=text("is_current"),
        ),
    )

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(Text)
    val_mean_accuracy: Mapped[float] = mapped_column(Float)
    test_mean_accuracy: Mapped[float | None] = mapped_column(Float)
    published: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    is_current: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class ScoringJob(Base):
    __tablename__ = "scoring_jobs"
    __table_args__ = (
        ForeignKeyConstraint(
            ["model_run_id", "model_epoch"], ["models.run_id", "models.epoch"], ondelete="SET NULL",
        ),
    )

    id: Mapped[str] = mapped_column(String, primary_key=True)
    model_path: Mapped[str | None] = mapped_column(Text)
    model_run_id: Mapped[str | None] = mapped_column(String)
    model_epoch: Mapped[int | None] = mapped_column(Integer)
    input_path: Mapped[str | None] = mapped_column(Text)
    output_csv: Mapped[str | None] = mapped_column(Text)
    errors_csv: Mapped[str | None] = mapped_column(Text)
    images: Mapped[int | None] = mapped_column(Integer)
    rows: Mapped[int | None] = mapped_column(Integer)
    errors: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String, default="running", server_default="running")
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    message: Mapped[str | None] = mapped_column(Text)


# -- value checks: every bad input names the field ----------------------------------------------
def _number(name: str, value: Any, *, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    value = float(value)
    if not math.isnan(value) and ((low is not None and value < low) or (high is not None and value > high)):
        raise ValueError(f"{name}: {value!r} is outside [{low}, {high}]")
    return value


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name}: expected a non-negative integer, got {value!r}")
    return value


def _text(name: str, value: Any) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name}: expected a non-empty string, got {value!r}")
    return value


def _message(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name}: expected a string, got {value!r}")
    return value


def _state(name: str, value: Any) -> str:
    if value not in STATES:
        raise ValueError(f"{name}: {value!r} is not one of {', '.join(STATES)}")
    return value


def _time(name: str, value: Any) -> datetime:
    """A datetime or ISO 8601 string (Airflow's {{ ts }}); naive times are taken as UTC."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{name}: {value!r} is not an ISO 8601 time") from None
    if not isinstance(value, datetime):
        raise ValueError(f"{name}: expected a datetime or ISO 8601 string, got {value!r}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    value = value.astimezone(timezone.utc)
    # A plain datetime: drivers need not know subclasses such as Airflow's pendulum.DateTime.
    return datetime(value.year, value.month, value.day, value.hour, value.minute, value.second,
                    value.microsecond, tzinfo=timezone.utc)


def _fraction(name: str, value: Any) -> float:
    return _number(name, value, low=0.0, high=1.0)


def _nonnegative(name: str, value: Any) -> float:
    return _number(name, value, low=0.0)


EPOCH_FIGURES = {
    "train_loss": _number,
    "train_accuracy": _fraction,
    "train_images": _count,
    "seconds": _nonnegative,
    "images_per_second": _nonnegative,
    "val_mean_accuracy": _fraction,
    "val_majority_baseline": _fraction,
    "test_mean_accuracy": _fraction,
}
ATTRIBUTE_FIGURES = {"accuracy": _fraction, "balanced_accuracy": _fraction, "f1": _fraction}
JOB_FIELDS = {
    "model_path": _text,
    "model_run_id": _text,
    "model_epoch": _count,
    "input_path": _text,
    "output_csv": _text,
    "errors_csv": _text,
    "images": _count,
    "rows": _count,
    "errors": _count,
    "status": _state,
    "started_at": _time,
    "finished_at": _time,
    "message": _message,
}


def _checked(fields: dict[str, Any], checks: dict[str, Any], what: str) -> dict[str, Any]:
    """Apply the check of each given field; None means 'leave as it is' and is dropped."""
    unknown = sorted(set(fields) - set(checks))
    if unknown:
        raise ValueError(f"{what}: unknown field(s) {', '.join(unknown)}; known: {', '.join(checks)}")
    return {name: checks[name](name, value) for name, value in fields.items() if value is not None}


def _epoch_number(value: Any) -> int:
    return _count("epoch", value)


# -- the store ----------------------------------------------------------------------------------
def default_url() -> str:
    """FACEATTR_DB_URL, else a SQLite file $FACEATTR_HOME/faceattr.db (FACEATTR_HOME: ./data)."""
    url = os.environ.get(DB_URL_ENV)
    if url:
        return url
    home = Path(os.environ.get(HOME_ENV) or "data").resolve()
    return f"sqlite:///{home / DB_FILE}"


class Store:
    """The run store at one database URL; the schema is brought to the latest migration on open."""

    def __init__(self, url: str | None = None):
        self.engine = _make_engine(url or default_url())
        self.url = self.engine.url.render_as_string(hide_password=True)
        try:
            if self._pending_migrations():
                self.upgrade()
        except StoreError:
            self.engine.dispose()
            raise
        except SQLAlchemyError as exc:
            self.engine.dispose()
            raise StoreError(f"run store {self.url}: {exc.__class__.__name__}: {exc}") from None

    @classmethod
    def from_env(cls) -> "Store":
        return cls(default_url())

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # -- schema ---------------------------------------------------------------------------------
    def _alembic_config(self, connection: Connection | None = None):
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        config.attributes["connection"] = connection
        return config

    def _pending_migrations(self) -> bool:
        _quiet_alembic()
        from alembic.migration import MigrationContext
        from alembic.script import ScriptDirectory

        scripts = ScriptDirectory.from_config(self._alembic_config())
        with self.engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
            current = set(context.get_current_heads())
        unknown = current - {rev.revision for rev in scripts.walk_revisions()}
        if unknown:
            raise StoreError(
                f"run store {self.url}: schema revision {', '.join(sorted(unknown))} is newer than this "
                "faceattr's migrations; upgrade faceattr"
            )
        return current != set(scripts.get_heads())

    def upgrade(self) -> None:
        """`alembic upgrade head` on this database, in one transaction."""
        _quiet_alembic()
        from alembic import command

        log.info("run store %s: bringing the schema to the latest migration", self.url)
        with _UPGRADE_LOCK, self._write() as conn:
            if conn.dialect.name == "postgresql":
                # Two tasks opening a fresh database at once: the second waits, then finds it done.
                # (On SQLite, _write's BEGIN IMMEDIATE does the same.)
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(hashtext('faceattr.store.store.upgrade'))")
            command.upgrade(self._alembic_config(conn), "head")

    # -- writes ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            conn.execution_options(faceattr_write=True)
            with conn.begin():
                yield conn

    def _upsert(self, conn: Connection, table: Any, rows: list[dict[str, Any]], keys: Iterable[str],
                update: Iterable[str]) -> None:
        """INSERT ... ON CONFLICT (keys) DO UPDATE SET only the `update` columns."""
        if not rows:
            return
        if conn.dialect.name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:  # postgresql: _make_engine accepts nothing else
            from sqlalchemy.dialects.postgresql import insert
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
        with self._write() as conn:
            self._upsert(conn, Run, [values], ["id"], [k for k in values if k != "id"])

    @staticmethod
    def _run_values(run_id: str, **fields: Any) -> dict[str, Any]:
        checks = {
            "run_dir": lambda name, value: str(Path(_text(name, value)).resolve()),
            "config": _json_object,
            "status": _state,
            "dag_run_id": _text,
            "started_at": _time,
            "finished_at": _time,
        }
        return {"id": _text("run_id", run_id), **_checked(fields, checks, f"run {run_id!r}")}

    def upsert_epoch(self, run_id: str, epoch: int, **figures: float | int | None) -> None:
        """Insert or update one epoch's figures (names in EPOCH_FIGURES); others stay as they are."""
        row = {"run_id": run_id, "epoch": _epoch_number(epoch),
               **_checked(figures, EPOCH_FIGURES, f"run {run_id!r} epoch {epoch!r}")}
        with self._write() as conn:
            self._require_run(conn, run_id)
            self._upsert(conn, Epoch, [row], ["run_id", "epoch"], [k for k in row if k not in ("run_id", "epoch")])

    def upsert_attribute_metrics(self, run_id: str, epoch: int, split: str,
                                 attributes: dict[str, dict[str, float]]) -> None:
        """One row per attribute: {"accuracy", "balanced_accuracy", "f1"} (and optional "majority_baseline")."""
        rows = _attribute_rows(run_id, epoch, split, attributes, where=f"run {run_id!r} {split} epoch {epoch!r}")
        with self._write() as conn:
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
                     test_mean_accuracy: float | None, published: bool = False,
                     make_current: bool = False) -> None:
        """Register a run's model. published/make_current=True set the flags; False leaves them as
        they are, so a retry never unpublishes. A current model is published, and the only current one."""
        values = {
            "run_id": _text("run_id", run_id),
            "epoch": _epoch_number(epoch),
            "path": str(Path(_text("path", path)).resolve()),
            "val_mean_accuracy": _fraction("val_mean_accuracy", val_mean_accuracy),
        }
        if test_mean_accuracy is not None:
            values["test_mean_accuracy"] = _fraction("test_mean_accuracy", test_mean_accuracy)
        if published or make_current:
            values["published"] = True
        with self._write() as conn:
            self._require_run(conn, run_id)
            if make_current:
                if conn.dialect.name == "postgresql":
                    conn.exec_driver_sql("SELECT pg_advisory_xact_lock(hashtext('faceattr.store.store.current'))")
                conn.execute(
                    Model.__table__.update()
                    .where(Model.is_current, ~((Model.run_id == run_id) & (Model.epoch == values["epoch"])))
                    .values(is_current=False)
                )
                values["is_current"] = True
            self._upsert(conn, Model, [values], ["run_id", "epoch"],
                         [k for k in values if k not in ("run_id", "epoch")])

    def upsert_scoring_job(self, job_id: str, **fields: Any) -> None:
        """Insert or update a scoring job (field names in JOB_FIELDS); None leaves a field as it is."""
        values = {"id": _text("job_id", job_id), **_checked(fields, JOB_FIELDS, f"scoring job {job_id!r}")}
        with self._write() as conn:
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
        epochs, attribute_rows = _read_metrics(run_id, layout)
        model = _read_best(layout, epochs)

        with self._write() as conn:
            self._upsert(conn, Run, [run], ["id"], [k for k in run if k != "id"])
            for figures in epochs.values():
                self._upsert(conn, Epoch, [figures], ["run_id", "epoch"],
                             [k for k in figures if k not in ("run_id", "epoch")])
            self._upsert_attribute_rows(conn, attribute_rows)
            if model is not None:
                model["run_id"] = run_id
                # Flags (published, current) are decisions, not files: a sync never changes them.
                self._upsert(conn, Model, [model], ["run_id", "epoch"],
                             [k for k in model if k not in ("run_id", "epoch")])
        return {
            "run_id": run_id,
            "epochs": len(epochs),
            "attribute_metrics": len(attribute_rows),
            "model_epoch": None if model is None else model["epoch"],
        }

    # -- reads ----------------------------------------------------------------------------------
    def current_model(self) -> dict[str, Any] | None:
        with Session(self.engine) as session:
            model = session.scalars(select(Model).where(Model.is_current)).first()
            return None if model is None else _model_dict(model)

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
                {**_row_dict(run), "epochs": len(epochs[run.id]), **_best(models[run.id], epochs[run.id])}
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
                    **_best(models, epochs)}

    def count(self, table: str) -> int:
        """Rows in one of the store's tables (for checks and tests)."""
        tables = {t.__tablename__: t for t in (Run, Epoch, AttributeMetric, Model, ScoringJob)}
        if table not in tables:
            raise ValueError(f"table: {table!r} is not one of {', '.join(tables)}")
        with Session(self.engine) as session:
            return session.scalar(select(func.count()).select_from(tables[table]))

    def scoring_job(self, job_id: str) -> dict[str, Any] | None:
        with Session(self.engine) as session:
            job = session.get(ScoringJob, job_id)
            return None if job is None else _row_dict(job)

    # -- text for `faceattr runs` -----------------------------------------------------------------
    def format_runs(self) -> str:
        runs = self.runs()
        if not runs:
            return f"no runs in the run store {self.url}"
        rows = [
            [r["id"], r["status"], r["epochs"], _fmt(r["best_epoch"]), _fmt(r["val_mean_accuracy"]),
             _fmt(r["test_mean_accuracy"]), _fmt(r["started_at"]), r["run_dir"]]
            for r in runs
        ]
        return _table(["run", "status", "epochs", "best epoch", "val acc", "test acc", "started", "run dir"], rows)

    def format_run(self, run_id: str) -> str:
        run = self.run(run_id)
        current = self.current_model()
        lines = [
            f"run {run['id']}  status {run['status']}  dag run {_fmt(run['dag_run_id'])}",
            f"folder {run['run_dir']}",
            f"started {_fmt(run['started_at'])}  finished {_fmt(run['finished_at'])}",
            f"best epoch {_fmt(run['best_epoch'])}  val acc {_fmt(run['val_mean_accuracy'])}  "
            f"test acc {_fmt(run['test_mean_accuracy'])}",
        ]
        for model in run["models"]:
            flags = [flag for flag in ("published", "current") if model[flag]]
            lines.append(f"model epoch {model['epoch']}: {model['path']}"
                         + (f" ({', '.join(flags)})" if flags else ""))
        if current and current["run_id"] != run["id"]:
            lines.append(f"current model: run {current['run_id']} epoch {current['epoch']}")

        lines += ["", "per epoch"]
        if run["epochs"]:
            lines.append(_table(
                ["epoch", "train loss", "train acc", "val acc", "val baseline", "test acc", "seconds", "img/s"],
                [[e["epoch"], _fmt(e["train_loss"]), _fmt(e["train_accuracy"]), _fmt(e["val_mean_accuracy"]),
                  _fmt(e["val_majority_baseline"]), _fmt(e["test_mean_accuracy"]), _fmt(e["seconds"], 1),
                  _fmt(e["images_per_second"], 1)] for e in run["epochs"]],
            ))
        else:
            lines.append("no epochs recorded")

        # Per-attribute figures of the best epoch (else the latest epoch that has any).
        metrics = run["attribute_metrics"]
        epoch = run["best_epoch"]
        if not any(m["epoch"] == epoch for m in metrics) and metrics:
            epoch = max(m["epoch"] for m in metrics)
        chosen = [m for m in metrics if m["epoch"] == epoch]
        lines += ["", f"per attribute, epoch {_fmt(epoch)}"]
        if not chosen:
            lines.append("no attribute metrics recorded")
            return "\n".join(lines)
        splits = [s for s in SPLITS if any(m["split"] == s for m in chosen)]
        by_key = {(m["attribute"], m["split"]): m for m in chosen}
        attributes = list(dict.fromkeys(m["attribute"] for m in chosen))
        headers = ["attribute"]
        for split in splits:
            headers += [f"{split} acc", f"{split} bal acc", f"{split} F1", f"{split} baseline"]
        rows = []
        for name in attributes:
            row: list[Any] = [name]
            for split in splits:
                m = by_key.get((name, split), {})
                row += [_fmt(m.get(k)) for k in ("accuracy", "balanced_accuracy", "f1", "majority_baseline")]
            rows.append(row)
        lines.append(_table(headers, rows))
        return "\n".join(lines)


def _quiet_alembic() -> None:
    """Alembic logs a dozen INFO lines per use, noise in every task log; keep its warnings. Called
    before alembic is imported (it logs on import), and only if nobody configured its logger."""
    alembic_log = logging.getLogger("alembic")
    if alembic_log.level == logging.NOTSET:
        alembic_log.setLevel(logging.WARNING)


# -- engine -------------------------------------------------------------------------------------
def _make_engine(url: str) -> Engine:
    try:
        backend = make_url(url).get_backend_name()
    except ArgumentError:
        raise StoreError(f"{DB_URL_ENV}: {url!r} is not a database URL (sqlite:///PATH or postgresql://...)") from None
    if backend not in ("sqlite", "postgresql"):
        raise StoreError(f"{DB_URL_ENV}: {backend} is not supported; use SQLite or PostgreSQL")
    if backend == "sqlite":
        engine = create_engine(url)
        database = engine.url.database
        if database and database != ":memory:" and not database.startswith("file:"):
            try:
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"run store {url}: cannot create its folder ({exc})") from None
        _sqlite_transactions(engine)
        return engine
    try:
        return create_engine(url, pool_pre_ping=True)
    except ModuleNotFoundError as exc:
        raise StoreError(f"run store: {exc}; PostgreSQL needs a driver such as psycopg2-binary") from None


def _sqlite_transactions(engine: Engine) -> None:
    """SQLAlchemy's recipe for real SQLite transactions (pysqlite would defer BEGIN and commit
    around DDL), with BEGIN IMMEDIATE for writes so concurrent writers queue on busy_timeout
    instead of failing with 'database is locked'."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None
        dbapi_connection.execute("PRAGMA foreign_keys = ON")
        dbapi_connection.execute("PRAGMA busy_timeout = 30000")

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("faceattr_write") else "BEGIN")


# -- run folder reading -------------------------------------------------------------------------
METRICS_FILE = re.compile(r"^(train|val|test)_epoch_(\d+)\.json$")


def _read_metrics(run_id: str, layout: RunLayout) -> tuple[dict[int, dict[str, Any]], list[dict[str, Any]]]:
    """Epoch figures by epoch and attribute-metric rows from RUN/metrics/*.json."""
    epochs: dict[int, dict[str, Any]] = {}
    attribute_rows: list[dict[str, Any]] = []
    folder = layout.root / "metrics"
    paths = sorted(folder.iterdir()) if folder.is_dir() else []
    for path in paths:
        match = METRICS_FILE.match(path.name)
        if not match:
            continue  # temporary files of an interrupted write, or unrelated files
        split, epoch = match.group(1), int(match.group(2))
        data = read_json(path)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object")
        if data.get("epoch") != epoch:
            raise ValueError(f"{path}: field 'epoch' is {data.get('epoch')!r}, but the file name says {epoch}")
        if data.get("split", split) != split:
            raise ValueError(f"{path}: field 'split' is {data['split']!r}, but the file name says {split!r}")
        figures = epochs.setdefault(epoch, {"run_id": run_id, "epoch": epoch})
        try:
            if split == "train" and "loss" in data:  # written by train_epoch
                figures.update(
                    train_loss=_number("loss", _field(data, "loss")),
                    train_accuracy=_fraction("accuracy", _field(data, "accuracy")),
                    train_images=_count("images", _field(data, "images")),
                    seconds=_nonnegative("seconds", _field(data, "seconds")),
                    images_per_second=_nonnegative("images_per_second", _field(data, "images_per_second")),
                )
            if split == "val":
                figures["val_mean_accuracy"] = _fraction("mean_accuracy", _field(data, "mean_accuracy"))
                if data.get("majority_baseline") is not None:
                    figures["val_majority_baseline"] = _fraction("majority_baseline", data["majority_baseline"])
            if split == "test":
                figures["test_mean_accuracy"] = _fraction("mean_accuracy", _field(data, "mean_accuracy"))
            if split != "train" or "attributes" in data:  # an evaluation file
                attribute_rows += _attribute_rows(run_id, epoch, split, _field(data, "attributes"), where="")
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{path}: {exc.args[0]}") from None
    return epochs, attribute_rows


def _read_best(layout: RunLayout, epochs: dict[int, dict[str, Any]]) -> dict[str, Any] | None:
    """The selected model from RUN/best.json, with the test accuracy of its epoch when measured."""
    if not layout.best.is_file():
        return None
    best = read_json(layout.best)
    try:
        if not isinstance(best, dict):
            raise ValueError("expected a JSON object")
        epoch = _epoch_number(_field(best, "epoch"))
        model = {
            "epoch": epoch,
            "path": str(layout.model.resolve()),
            "val_mean_accuracy": _fraction("val_mean_accuracy", _field(best, "val_mean_accuracy")),
        }
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{layout.best}: {exc.args[0]}") from None
    test = epochs.get(epoch, {}).get("test_mean_accuracy")
    if test is not None:
        model["test_mean_accuracy"] = test
    return model


def _field(data: dict[str, Any], name: str) -> Any:
    if name not in data:
        raise KeyError(f"missing field {name!r}")
    return data[name]


def _attribute_rows(run_id: str, epoch: Any, split: str, attributes: Any, *, where: str) -> list[dict[str, Any]]:
    prefix = f"{where}: " if where else ""
    if split not in SPLITS:
        raise ValueError(f"{prefix}split {split!r} is not one of {', '.join(SPLITS)}")
    epoch = _epoch_number(epoch)
    if not isinstance(attributes, dict) or not attributes:
        raise ValueError(f"{prefix}attributes: expected a non-empty object of attribute name -> figures")
    rows = []
    for name, figures in attributes.items():
        if name not in ATTRIBUTES:
            raise ValueError(f"{prefix}attributes: {name!r} is not a CelebA attribute")
        if not isinstance(figures, dict):
            raise ValueError(f"{prefix}attributes.{name}: expected an object, got {figures!r}")
        row = {"run_id": run_id, "epoch": epoch, "split": split, "attribute": name}
        for key, check in ATTRIBUTE_FIGURES.items():
            if key not in figures:
                raise ValueError(f"{prefix}attributes.{name}: missing field {key!r}")
            row[key] = check(f"attributes.{name}.{key}", figures[key])
        if figures.get("majority_baseline") is not None:
            row["majority_baseline"] = _fraction(f"attributes.{name}.majority_baseline", figures["majority_baseline"])
        rows.append(row)
    return rows


def _json_object(name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{name}: expected a JSON object (dict), got {type(value).__name__}")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: not JSON-serialisable ({exc})") from None
    return value


# -- row -> dict and text -----------------------------------------------------------------------
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


def _best(models: list[dict[str, Any]], epochs: list[dict[str, Any]]) -> dict[str, Any]:
    """The selected model (highest val accuracy, earlier epoch on ties, as select_best picks),
    else the best validated epoch so far."""
    candidates = models or [e for e in epochs if e["val_mean_accuracy"] is not None]
    if not candidates:
        return {"best_epoch": None, "val_mean_accuracy": None, "test_mean_accuracy": None}
    best = min(candidates, key=lambda r: (-r["val_mean_accuracy"], r["epoch"]))
    test = best.get("test_mean_accuracy")
    if test is None:
        test = next((e["test_mean_accuracy"] for e in epochs if e["epoch"] == best["epoch"]), None)
    return {"best_epoch": best["epoch"], "val_mean_accuracy": best["val_mean_accuracy"], "test_mean_accuracy": test}


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M UTC")
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain-text table: first column left-aligned, the rest right-aligned."""
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(
            (c.ljust(w) if i == 0 else c.rjust(w)) for i, (c, w) in enumerate(zip(row, widths))
        ).rstrip()

    return "\n".join([line(cells[0]), line(["-" * w for w in widths])] + [line(r) for r in cells[1:]])
