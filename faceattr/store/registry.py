"""The model registry: every published run is a candidate; one is the champion, the model that
scoring with `champion` (alias `latest`) uses.

States (schema.MODEL_STATES), each recorded on the model with its reason, time and actor, and
appended to model_events (the history):
    champion    the model scoring uses; the database holds at most one (a unique partial index)
    challenger  published and not promoted: it did not beat the champion, or was not comparable
    retired     was the champion until another model replaced it

The publish gate (`publish`, what the DAG's publish_model and `faceattr models publish` call):
    - the model must be the run's: model.pt's run, arch and epoch match config.json and best.json
      (the check `evaluate` makes), its test metrics match the digest written with them and
      record this very model.pt's sha256; anything else is refused with one line, nothing changed;
    - a run id is one run folder: another folder under a recorded run id is refused;
    - the first published model becomes champion;
    - `force` promotes whatever the comparison says (the DAG param `promote: force`);
    - otherwise faceattr.store.gate compares: the recorded test accuracies on the same evaluation
      set, else both models re-scored on the challenger's test images the champion never saw
      (at least `min_images` of them). The run is promoted when its gain is above 0 and at least
      `min_gain` (param `promote_min_gain`); the comparison (rule, images, both figures) is
      recorded on the model and its event.
Each decision is one transaction that reads the champion and writes the outcome under a lock
(BEGIN IMMEDIATE on SQLite, an advisory lock on PostgreSQL), so two publishes racing leave exactly
one champion, the better one. `promote` and `rollback` change the champion by hand.
"""
from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, insert, select, update
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import SQLAlchemyError

from faceattr.fsutil import ChecksumError, sha256_of
from faceattr.run.chosen import selected_model
from faceattr.run.config import ConfigError, RunConfig
from faceattr.run.layout import RunLayout
from faceattr.run.metrics import read_best, read_test_metrics
from faceattr.store.gate import (
    EVAL_SET_FIELDS, GATE_MIN_IMAGES, HAND_RULE, Rescore, compare, evaluation_set, set_difference,
)
from faceattr.store.schema import MODEL_STATES, Model, ModelEvent, Run
from faceattr.store.store import Store, champion_row as _champion, default_url

__all__ = ["GATE_MIN_IMAGES", "RegistryError", "evaluation_set", "set_difference", "publish", "promote", "rollback",
           "resolve", "champion", "candidates", "history", "published_run_ids", "check_min_gain",
           "check_min_images"]

CHAMPION_NAMES = ("champion", "latest")  # "latest": the name scoring used before the registry
ROLLED_BACK = "rolled back by"  # how a rollback's event reason starts: _champion_stack pops on it
_LOCK = "SELECT pg_advisory_xact_lock(hashtext('faceattr.store.registry'))"


class RegistryError(ValueError):
    """A registry request that cannot be done (no such model, nothing to roll back to); says why."""


# -- publish: record, gate, maybe promote --------------------------------------------------------
def publish(store: Store, run_dir: str | Path, *, run_id: str | None = None, min_gain: float = 0.0,
            force: bool = False, actor: str, rescore: Rescore | None = None,
            min_images: int = GATE_MIN_IMAGES) -> dict[str, Any]:
    """Record the finished run folder (as sync_run_dir does: status success, finished now) and let
    its tested model through the gate. The DAG's publish task and `faceattr models publish` both
    make exactly this call, with the engine's rescore function (faceattr.engine.rescore).

    Returns {"run", "epoch", "state", "reason", "promoted", "previous_champion", "val_mean_accuracy",
    "test_mean_accuracy", "model", "comparison"}; `promoted` is true only when this call made it the champion.
    """
    layout = RunLayout(run_dir)
    run_id = run_id or layout.root.name
    check_min_gain(min_gain)
    check_min_images(min_images)
    best = read_best(layout.root, missing_ok=False)
    sha256 = tested_model_sha256(layout, best["epoch"])
    _check_identity(store, run_id, layout.root)
    eval_set = evaluation_set(layout.root)
    store.sync_run_dir(run_id, layout.root, status="success", finished_at=datetime.now(timezone.utc))

    for _ in range(3):  # the comparison runs outside the lock; redone if the champion changed meanwhile
        with store.engine.connect() as conn:
            champion = _champion(conn)
            model = {**_model(conn, run_id, best["epoch"]), "eval_set": eval_set, "sha256": sha256}
            if champion is not None:
                _complete_eval_set(conn, champion)
        decision = None
        if champion is not None and not _same(champion, model) and not force:
            decision = compare(model, layout.root, champion, _run_dir(store, champion["run_id"]),
                               min_gain=min_gain, min_images=min_images, rescore=rescore)
        with store.write() as conn:
            _lock(conn)
            now_champion = _champion(conn)
            if _key_of(now_champion) != _key_of(champion):
                continue
            if champion is not None:  # what _complete_eval_set found, stored now
                conn.execute(update(Model).where(*_key(champion)).values(eval_set=champion["eval_set"]))
            return _decide(conn, model, champion, decision, force, actor)
    raise RegistryError(f"run {run_id}: the champion kept changing while this run was compared; publish it again")


def _decide(conn: Connection, model: dict, champion: dict | None, decision: tuple | None, force: bool,
            actor: str) -> dict[str, Any]:
    """Write the gate's outcome (inside the locked transaction whose champion the decision was made on)."""
    conn.execute(update(Model).where(*_key(model)).values(eval_set=model["eval_set"], sha256=model["sha256"]))
    if champion is not None and _same(champion, model):
        # A retry of the publish that promoted it reports the promotion again (its event must fire).
        event = _last_event(conn, model, "champion")
        promoted = event is not None and event.actor == actor
        return _result(model, "champion", model["reason"], promoted, _previous(event))
    if champion is None:
        state, reason, comparison = "champion", "first published model", {"rule": "first published model"}
    elif force:
        state, reason = "champion", f"forced (promote: force) over run {champion['run_id']}" + _versus(model, champion)
        comparison = {"rule": "forced: promote: force, whatever the comparison says"}
    else:
        state, reason, comparison = decision
    if state == "champion":
        _make_champion(conn, model, champion, reason, actor, comparison)
    else:
        _set_state(conn, model, state, reason, actor, champion, comparison=comparison)
    return _result(model, state, reason, state == "champion", champion)


def tested_model_sha256(layout: RunLayout, epoch: int) -> str:
    """The sha256 of RUN/model.pt after checking it is this run's tested model: its run, arch and
    epoch match config.json and best.json (the check `evaluate` makes), and the test metrics are
    intact and measured this very file. Anything else: RegistryError, one line."""
    if not layout.metrics("test", epoch).is_file():
        raise FileNotFoundError(
            f"{layout.metrics('test', epoch)}: the selected epoch has no test metrics; run "
            f"'faceattr evaluate --run {layout.root} --epoch best --split test' before publishing")
    retest = (f"re-run 'faceattr select --run {layout.root}' and 'faceattr evaluate --run {layout.root} --epoch best "
              "--split test' for that run")
    try:
        tested = read_test_metrics(layout.root, epoch)
        # torch only when publishing: the DAG files import the registry at parse time (the form's model list)
        from faceattr.checkpoint import load_checkpoint
        from faceattr.model import check_run_model

        info = load_checkpoint(layout.model)  # checks the .sha256 beside it
        check_run_model(info, layout.model, layout.root, arch=RunConfig.load(layout.root).arch, epoch=epoch)
    except (ChecksumError, ConfigError) as exc:
        raise RegistryError(f"{exc}; nothing was published") from None
    except ValueError as exc:  # another run's or epoch's model file, or not a model file
        raise RegistryError(f"{str(exc).split('; run ')[0]}; {retest}; nothing was published") from None
    sha256 = sha256_of(layout.model)
    if tested.get("model_sha256") != sha256:
        raise RegistryError(f"{layout.model}: not the model its test metrics measured ({layout.metrics('test', epoch)} "
                            f"records {tested.get('model_sha256')}, the file is {sha256}); {retest}; "
                            "nothing was published")
    return sha256


def _check_identity(store: Store, run_id: str, run_dir: Path) -> None:
    """A run id names one run folder: another folder under it would replace the recorded run."""
    recorded = _run_dir(store, run_id)
    if recorded is not None and Path(recorded) != run_dir.resolve():
        raise RegistryError(f"run {run_id!r} is already recorded with the folder {recorded}; refusing to publish "
                            f"{run_dir.resolve()} under the same run id (nothing was changed)")


def _run_dir(store: Store, run_id: str) -> str | None:
    with store.engine.connect() as conn:
        return conn.execute(select(Run.run_dir).where(Run.id == run_id)).scalar()


def check_min_images(min_images: Any) -> int:
    """gate_min_images / --gate-min-images: a whole number, 1 or more."""
    if isinstance(min_images, bool) or not isinstance(min_images, int) or min_images < 1:
        raise ConfigError(f"gate_min_images: expected a whole number, 1 or more, got {min_images!r}")
    return min_images


def check_min_gain(min_gain: Any) -> float:
    """promote_min_gain / --min-gain: a finite number in [0, 1]. The DAG checks it before training too."""
    if isinstance(min_gain, bool) or not isinstance(min_gain, (int, float)) or not math.isfinite(min_gain) \
            or not 0 <= min_gain <= 1:
        raise ConfigError(f"promote_min_gain: expected a number in [0, 1], got {min_gain!r}")
    return float(min_gain)


def _versus(model: dict, champion: dict) -> str:
    new, old = model["test_mean_accuracy"], champion["test_mean_accuracy"]
    if new is None or old is None:
        return ""
    return f": test mean accuracy {new:.4f} vs {old:.4f} (gain {new - old:+.4f})"


# -- by hand -------------------------------------------------------------------------------------
def promote(store: Store, run_id: str, *, actor: str, epoch: int | None = None) -> dict[str, Any]:
    """Make the run's model the champion by hand; returns {"changed", "message", "champion", "previous"}."""
    with store.write() as conn:
        _lock(conn)
        model = _run_model(conn, run_id, epoch)
        _complete_eval_set(conn, model)
        if model["sha256"] is None:  # never published: the file as it is promoted
            model["sha256"] = sha256_of(model["path"])
            conn.execute(update(Model).where(*_key(model)).values(sha256=model["sha256"]))
        champion = _champion(conn)
        if champion is not None and _same(champion, model):
            return {"changed": False, "message": f"run {run_id} epoch {model['epoch']} is already the champion",
                    "champion": _brief(model), "previous": None}
        _make_champion(conn, model, champion, f"promoted by hand by {actor}", actor, {"rule": HAND_RULE})
    was = f" (was run {champion['run_id']} epoch {champion['epoch']})" if champion else ""
    return {"changed": True, "message": f"champion is now run {run_id} epoch {model['epoch']}{was}",
            "champion": _brief(model), "previous": _brief(champion)}


def rollback(store: Store, *, actor: str) -> dict[str, Any]:
    """Give the championship back to the champion before the current one. A stack: each rollback
    undoes one more promotion (A, B, C promoted: rollback gives B, another gives A), never back
    to the model a rollback just removed."""
    with store.write() as conn:
        _lock(conn)
        champion = _champion(conn)
        if champion is None:
            raise RegistryError("rollback: there is no champion yet")
        stack = _champion_stack(conn)
        if len(stack) < 2 or stack[-1] != (champion["run_id"], champion["epoch"]):
            raise RegistryError(f"rollback: run {champion['run_id']} was the first champion; nothing to roll back to")
        run_id, epoch = stack[-2]
        previous = conn.execute(select(Model).where(Model.run_id == run_id, Model.epoch == epoch)).mappings().first()
        if previous is None:
            raise RegistryError(f"rollback: the previous champion, run {run_id}, is no longer in the store")
        previous = dict(previous)
        if not Path(previous["path"]).is_file():
            raise RegistryError(f"rollback: the previous champion's model {previous['path']} is missing")
        _make_champion(conn, previous, champion,
                       f"{ROLLED_BACK} {actor} from run {champion['run_id']} epoch {champion['epoch']}", actor,
                       {"rule": HAND_RULE})
    return {"changed": True, "champion": _brief(previous), "previous": _brief(champion),
            "message": (f"champion is now run {previous['run_id']} epoch {previous['epoch']} "
                        f"(rolled back from run {champion['run_id']} epoch {champion['epoch']})")}


def _champion_stack(conn: Connection) -> list[tuple[str, int]]:
    """The champions in the order they were crowned, less those a rollback undid: the last is the champion."""
    stack: list[tuple[str, int]] = []
    events = conn.execute(select(ModelEvent).where(ModelEvent.state == "champion").order_by(ModelEvent.id)).all()
    for event in events:
        model = (event.run_id, event.epoch)
        if (event.reason or "").startswith(ROLLED_BACK):
            if stack:
                stack.pop()  # the champion it undid
            if stack and stack[-1] == model:
                continue
        stack.append(model)
    return stack


# -- reads ---------------------------------------------------------------------------------------
def champion(store: Store) -> dict[str, Any] | None:
    with store.engine.connect() as conn:
        return _champion(conn)


def resolve(store: Store, name: str) -> dict[str, Any]:
    """`champion` (or `latest`) -> the champion; a run id -> that run's published model.
    Returns {"path", "run_id", "epoch", "sha256"}: the model file must exist and be the one published
    (scoring loads that path and checks that sha256 again)."""
    with store.engine.connect() as conn:
        if name in CHAMPION_NAMES:
            found = _champion(conn)
            if found is None:
                raise RegistryError(f"model {name!r}: no model has been published yet; publish a run first")
        else:
            rows = conn.execute(select(Model).where(Model.run_id == name, Model.state.is_not(None))
                                .order_by(Model.state_at.desc())).mappings().all()
            if not rows:
                known = conn.execute(select(Model.run_id).where(Model.state.is_not(None)).order_by(Model.run_id)
                                     .limit(20)).scalars().all()
                raise RegistryError(f"model {name!r}: no published model of that run; give 'champion' or one "
                                    f"of: {', '.join(known) if known else 'none published yet'}")
            found = dict(rows[0])
    path = Path(found["path"])
    if not path.is_file():
        raise FileNotFoundError(f"model {name!r}: {path} is recorded in the run store but missing on disk")
    # Every epoch's row of a run points at one RUN/model.pt: a run selected again since holds another model.
    sha256 = sha256_of(path)
    if found["sha256"] is not None and sha256 != found["sha256"]:
        run_dir = path.parent
        raise RegistryError(
            f"model {name!r}: {path} has changed since run {found['run_id']} epoch {found['epoch']} was published "
            f"(sha256 {found['sha256'][:12]}..., now {sha256[:12]}...); it is not used: re-run 'faceattr select "
            f"--run {run_dir}' and 'faceattr evaluate --run {run_dir} --epoch best --split test' for that run")
    return {"path": str(path), "run_id": found["run_id"], "epoch": int(found["epoch"]), "sha256": sha256}


def published_run_ids(url: str | None = None) -> list[str]:
    """Run ids of the published models, newest change first, read without opening the store (which
    would create or migrate it): for forms built when a DAG file is parsed. [] when unreachable."""
    url = make_url(url or default_url())
    if url.get_backend_name() == "sqlite" and not Path(url.database or "").is_file():
        return []
    engine = create_engine(url, **({"connect_args": {"connect_timeout": 3}} if url.get_backend_name() == "postgresql"
                                   else {}))
    try:
        with engine.connect() as conn:
            return list(conn.execute(select(Model.run_id).where(Model.state.is_not(None))
                                     .order_by(Model.state_at.desc())).scalars())
    except (SQLAlchemyError, ModuleNotFoundError):
        return []
    finally:
        engine.dispose()


def candidates(store: Store) -> list[dict[str, Any]]:
    """Every published model: the champion first, then by the time of their last change, newest first."""
    with store.engine.connect() as conn:
        rows = conn.execute(select(Model, Run.started_at).join(Run, Run.id == Model.run_id)
                            .where(Model.state.is_not(None))).mappings().all()
    never = datetime.min.replace(tzinfo=timezone.utc)
    found = [dict(row) for row in rows]
    return sorted(found, key=lambda m: (m["state"] != "champion", -(m["state_at"] or never).timestamp()))


def history(store: Store, limit: int = 20) -> list[dict[str, Any]]:
    """The latest changes of state, newest first."""
    with store.engine.connect() as conn:
        rows = conn.execute(select(ModelEvent).order_by(ModelEvent.id.desc()).limit(limit)).mappings().all()
    return [dict(row) for row in rows]


# -- helpers (inside one write transaction) -----------------------------------------------------
def _lock(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":  # SQLite: the transaction began IMMEDIATE
        conn.exec_driver_sql(_LOCK)


def _key(model: dict) -> tuple:
    return Model.run_id == model["run_id"], Model.epoch == model["epoch"]


def _same(a: dict, b: dict) -> bool:
    return (a["run_id"], a["epoch"]) == (b["run_id"], b["epoch"])


def _key_of(model: dict | None) -> tuple | None:
    return None if model is None else (model["run_id"], model["epoch"], model.get("sha256"))


def _model(conn: Connection, run_id: str, epoch: int) -> dict[str, Any]:
    row = conn.execute(select(Model).where(Model.run_id == run_id, Model.epoch == epoch)).mappings().first()
    if row is None:
        raise RegistryError(f"run {run_id!r} epoch {epoch}: no model recorded")
    return dict(row)


def _run_model(conn: Connection, run_id: str, epoch: int | None) -> dict[str, Any]:
    query = select(Model).where(Model.run_id == run_id)
    if epoch is not None:
        query = query.where(Model.epoch == epoch)
    rows = [dict(row) for row in conn.execute(query).mappings()]
    if not rows:
        raise RegistryError(f"run {run_id!r}: no model recorded in the run store; publish it first")
    run_dir = conn.execute(select(Run.run_dir).where(Run.id == run_id)).scalar()
    model = selected_model(run_dir, rows)
    if not Path(model["path"]).is_file():
        raise RegistryError(f"run {run_id!r}: its model {model['path']} is missing on disk")
    return model


def _complete_eval_set(conn: Connection, model: dict) -> None:
    """Fill in the parts of a model's evaluation set that were never recorded (a migrated or
    hand-promoted champion, or one published before a part existed) from its run folder when it is
    readable here: else such a champion could never be compared, so never beaten."""
    recorded = model.get("eval_set") or {}
    if all(key in recorded for key in EVAL_SET_FIELDS):
        return
    run_dir = conn.execute(select(Run.run_dir).where(Run.id == model["run_id"])).scalar()
    try:
        found = evaluation_set(run_dir)
    except (OSError, ValueError):
        return
    model["eval_set"] = {**found, **recorded}  # what was recorded when it was tested wins
    conn.execute(update(Model).where(*_key(model)).values(eval_set=model["eval_set"]))  # kept in a write transaction


def _last_event(conn: Connection, model: dict, state: str):
    return conn.execute(select(ModelEvent).where(ModelEvent.run_id == model["run_id"],
                                                 ModelEvent.epoch == model["epoch"], ModelEvent.state == state)
                        .order_by(ModelEvent.id.desc()).limit(1)).first()


def _set_state(conn: Connection, model: dict, state: str, reason: str, actor: str, champion: dict | None,
               current: bool = False, comparison: dict | None = None) -> None:
    """Write the model's state and append the event (nothing when state and reason are unchanged: a retry)."""
    if (model.get("state"), model.get("reason"), model.get("is_current")) == (state, reason, current):
        return
    if state not in MODEL_STATES:
        raise ValueError(f"model state {state!r}: expected one of {', '.join(MODEL_STATES)}")
    at = datetime.now(timezone.utc)
    conn.execute(update(Model).where(*_key(model)).values(
        state=state, reason=reason, actor=actor, state_at=at, is_current=current, comparison=comparison))
    conn.execute(insert(ModelEvent).values(
        run_id=model["run_id"], epoch=model["epoch"], state=state, reason=reason, actor=actor, at=at,
        previous_run_id=champion["run_id"] if champion else None,
        previous_epoch=champion["epoch"] if champion else None, comparison=comparison))
    model.update(state=state, reason=reason, actor=actor, state_at=at, is_current=current, comparison=comparison)


def _make_champion(conn: Connection, model: dict, champion: dict | None, reason: str, actor: str,
                   comparison: dict | None) -> None:
    if champion is not None:  # first: the unique index allows one champion at any moment
        _set_state(conn, champion, "retired", f"replaced by run {model['run_id']} epoch {model['epoch']}",
                   actor, None, comparison=champion.get("comparison"))
    _set_state(conn, model, "champion", reason, actor, champion, current=True, comparison=comparison)


def _brief(model: dict | None) -> dict | None:
    if model is None:
        return None
    return {key: model.get(key) for key in ("run_id", "epoch", "val_mean_accuracy", "test_mean_accuracy")}


def _previous(event) -> dict | None:
    return None if event is None or event.previous_run_id is None else \
        {"run_id": event.previous_run_id, "epoch": event.previous_epoch}


def _result(model: dict, state: str, reason: str | None, promoted: bool, previous: dict | None) -> dict[str, Any]:
    return {"run": model["run_id"], "epoch": model["epoch"], "state": state, "reason": reason,
            "promoted": promoted, "previous_champion": _brief(previous) if previous and "path" in previous
            else previous, "val_mean_accuracy": model["val_mean_accuracy"],
            "test_mean_accuracy": model["test_mean_accuracy"], "model": model["path"],
            "comparison": model.get("comparison"), "sha256": model.get("sha256")}
