"""Task bodies of faceattr_train (dags/): each takes plain values and returns a small summary.

The DAG files stay a table of contents; the logic lives here, importable and testable without a
scheduler. This module is imported when the DAG files are parsed, so it must stay light: torch,
torchvision, pandas and sklearn are imported inside the functions that need them (through the
library modules), never at the top; each such import says so. Settings come from faceattr.settings.

Every task that touches the run folder does it through `with run_folder(params, run_id) as run:`,
which pulls the folder from the object store (FACEATTR_ARTIFACTS) on entry and, when the body
finishes, pushes what it wrote and optionally records the folder in the run store.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterator, Mapping

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from faceattr.run.config import ConfigError, RunConfig, save_or_check
from faceattr.run.lock import run_lock
from faceattr.data.access import AccessError, check_path
from faceattr.data.layout import ATTR_FILE, celeba_dir, images_dir
from faceattr.orchestration.params import check_conf, train_params
from faceattr.run import artifacts
from faceattr.run.layout import RunLayout, sanitize_run_id
from faceattr.run.selection import ranking_measure, rule_text, stop_reason, validation_scores
from faceattr.run.timing import duration, epoch_seconds, now, run_eta
from faceattr.store import registry
from faceattr.store.store import RunNotFoundError, Store

log = logging.getLogger(__name__)

MODEL_ASSET_NAME = "faceattr/model"
DATA_ASSET_NAME = "faceattr/data"  # a new data version landed (faceattr_data's announce_data)
DIGITS = 4  # XCom and asset-event figures: 0.7956, not 0.7956249999999999


class Skip(AirflowSkipException):
    """A task has nothing to do for this run: Airflow marks it skipped, not failed."""


class Refused(AirflowFailException):
    """A setting or path of the run is wrong: the task fails at once, since a retry would fail the same way."""


@contextlib.contextmanager
def refuse_bad_settings():
    """Turn configuration and path errors into Refused, so they skip the task's retries."""
    try:
        yield
    except (ConfigError, AccessError) as exc:
        raise Refused(str(exc)) from exc


def skip(reason: str) -> Skip:
    """A Skip whose reason is also the task's first log line, where a user opening a skipped task looks."""
    log.info("skipped: %s", reason)
    return Skip(reason)


def epoch_group_ids(count: int) -> list[str]:
    """epoch_01, epoch_02, ...: zero-padded so the grid sorts them."""
    width = max(2, len(str(count)))
    return [f"epoch_{epoch:0{width}d}" for epoch in range(1, count + 1)]


# -- run context ------------------------------------------------------------------------------
def config_from_params(params: Mapping[str, Any]) -> RunConfig:
    """The RunConfig of a DAG run, with the dataset root checked against FACEATTR_DATA_ROOTS."""
    values = {f.name: params[f.name] for f in fields(RunConfig) if f.name in params}
    config = RunConfig.from_dict(values, source="DAG params")
    root = check_path(config.root, "root")
    if config.weights not in ("imagenet", "none"):
        config = config.replace(weights=str(check_path(config.weights, "weights")))
    return config.replace(root=str(root))


def run_dir_for(params: Mapping[str, Any], dag_run_id: str) -> Path:
    """<output>/<sanitised run id>, the output folder checked against FACEATTR_DATA_ROOTS."""
    return check_path(params["output"], "output") / sanitize_run_id(dag_run_id)


@dataclass(frozen=True)
class Run:
    """One DAG run as a task sees it: its config and run folder."""

    config: RunConfig
    dir: Path
    dag_run_id: str

    @property
    def id(self) -> str:
        """The run's id in the run store: its folder's name."""
        return self.dir.name

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.dir)


def run_context(params: Mapping[str, Any], dag_run_id: str) -> Run:
    """The run's config and folder; wrong settings are Refused (no retry)."""
    with refuse_bad_settings():
        return Run(config_from_params(params), run_dir_for(params, dag_run_id), dag_run_id)


@contextlib.contextmanager
def run_folder(params: Mapping[str, Any], run_id: str, *, record: bool = False,
               **run_fields: Any) -> Iterator[Run]:
    """The run folder for one task's work: pulled on entry; pushed when the body finishes.

    With `record`, the folder is then synced into the run store (run_fields: status, started_at,
    finished_at, dag_run_id, as Store.sync_run_dir takes them). A body that raises (Skip included)
    pushes and records nothing: a retry starts from what the last successful task left.
    """
    run = run_context(params, run_id)  # run_id: the DAG run's id
    # One process at a time in the folder: a DAG run's tasks follow each other, so only a stray
    # `faceattr` command (or a zombie try of this task) is refused, in one line naming it.
    with run_lock(run.dir, f"Airflow task of DAG run {run_id}", create=True):
        artifacts.pull(run.dir)
        yield run
        artifacts.push(run.dir)
    if record:
        with store() as opened:
            opened.sync_run_dir(run.id, run.dir, **run_fields)


def store() -> Store:
    return Store.from_env()


def rounded(value: Any) -> Any:
    """`value` with every float rounded to DIGITS decimals (dicts and lists walked)."""
    if isinstance(value, float):
        return round(value, DIGITS) if math.isfinite(value) else value
    if isinstance(value, dict):
        return {key: rounded(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(item) for item in value]
    return value


def summary(result: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    """The named entries of a library result as plain, rounded JSON values: a task's small XCom."""
    out = {}
    for key in keys:
        value = result.get(key)
        out[key] = str(value) if isinstance(value, Path) else rounded(value)
    return out


_EVAL_SUMMARY = ("epoch", "images", "mean_accuracy", "majority_baseline", "mean_balanced_accuracy", "mean_f1")


# -- faceattr_train tasks ---------------------------------------------------------------------
def download(params: Mapping[str, Any], conf: Mapping[str, Any] | None = None) -> dict:
    """Check the run's settings, then fetch and verify the dataset into the root (idempotent).

    Only fetching is worth retrying: bad settings fail at once (Refused). New data becomes a new
    data version; this run trains on it (faceattr_data's announce_data is what starts retrains).
    """
    with refuse_bad_settings():
        check_conf(conf, set(train_params()))
        config = config_from_params(params)
        registry.check_min_gain(params.get("promote_min_gain") or 0.0)  # publish's own checks, before training
        registry.check_min_images(params.get("gate_min_images", registry.GATE_MIN_IMAGES))
        check_path(params["output"], "output")
        source = checked_source(params.get("source"))
    root = Path(config.root)
    if not source:
        attr = celeba_dir(root) / ATTR_FILE
        if not attr.is_file() or not images_dir(root).is_dir():
            raise Refused(
                f"{celeba_dir(root)}: no dataset here ({ATTR_FILE} and {images_dir(root).name}/ expected) "
                "and no source given; set the 'source' param (a folder, a mirror URL or 'gdrive')"
            )
        log.info("download: no source given; using the dataset in %s", celeba_dir(root))
        return {"status": "present", "root": str(root)}
    return _acquire(source, root)


def check_data(params: Mapping[str, Any]) -> dict:
    """faceattr_data's check: the source into the root; a changed source becomes a new data version."""
    with refuse_bad_settings():
        root = check_path(params["root"], "root")
        source = checked_source(params.get("source"))
    if not source:
        raise Refused("no source to check: set the 'source' param or FACEATTR_SOURCE (a folder, a mirror URL or "
                      "'gdrive')")
    return _acquire(source, root)


def checked_source(source: str | None) -> str | None:
    """A local source folder checked against FACEATTR_DATA_ROOTS; URLs and 'gdrive' as they are."""
    if source and "://" not in source and source != "gdrive":
        return str(check_path(source, "source"))
    return source


def _acquire(source: str, root: Path) -> dict:
    from faceattr.data.download import acquire  # torch, pandas: not at DAG parse time
    result = acquire(source, root)
    log.info("download: %s from %s into %s: %s, data version %s (previous %s, changes %s)", result["status"],
             result["source"], root, result["counts"], result["version"], result["previous_version"],
             result["changes"])
    return summary(result, "status", "source", "root", "counts", "seconds", "version", "previous_version", "changes")


def split(params: Mapping[str, Any], dag_run_id: str) -> dict:
    """Start the run folder: save config.json (or check it matches), write split.csv and record the
    data version it was made from (RUN/data_version.json, the store's runs.data_version)."""
    from faceattr.data.split import make_split  # torch, pandas: not at DAG parse time
    refuse_another_dag_runs_folder(run_context(params, dag_run_id))
    # A retry on another worker pulls first, so it checks the saved config.json.
    with run_folder(params, dag_run_id, record=True, status="running", dag_run_id=dag_run_id,
                    started_at=now()) as run:
        save_or_check(run.config, run.dir)
        result = make_split(Path(run.config.root), run.config.split, run.config.seed, run.dir)
    log.info("split: %s -> %s (data version %s)", {k: result[k] for k in ("train", "val", "test")}, result["path"],
             result["data_version"])
    return {"run_dir": str(run.dir), **summary(result, "train", "val", "test", "strategy", "path", "data_version")}


def refuse_another_dag_runs_folder(run: Run) -> None:
    """Two DAG run ids can give one folder name (a:b and a-b): never reuse the other run's folder."""
    with store() as opened:
        try:
            owner = opened.run(run.id)["dag_run_id"]
        except RunNotFoundError:
            return
    if owner is not None and owner != run.dag_run_id:
        raise Refused(f"run folder {run.dir} belongs to DAG run {owner!r} (both ids give the folder name "
                      f"{run.id!r}); trigger this run with another run id")


def cache_images(params: Mapping[str, Any], dag_run_id: str) -> dict:
    """Decode the run's images once into RUN/cache/ when its training reads the fast path.

    It runs on the GPU queue because the cache is read from the training worker's local disk; a
    run on the PIL path ("pil", or "auto" on a CPU) needs none and returns at once.
    """
    # torch: never loaded when a DAG file is parsed, only in the task that builds the cache
    from faceattr.data.cache import build_cache
    from faceattr.runtime import resolve_device

    run = run_context(params, dag_run_id)
    device = resolve_device(run.config.device)
    if not (run.config.data_path == "cache" or (run.config.data_path == "auto" and device.type == "cuda")):
        reason = f"not needed: data_path {run.config.data_path!r} on {device.type} decodes JPEGs per batch"
        log.info("cache: %s", reason)
        return {"run_dir": str(run.dir), "status": reason}
    with run_folder(params, dag_run_id) as run:  # RUN/cache/ itself stays local (artifacts.LOCAL_ONLY)
        result = build_cache(run.dir)
    log.info("cache: %s", {split: info["status"] for split, info in result["splits"].items()})
    return {"run_dir": str(run.dir), "bytes": result["bytes"],
            **{split: info["images"] for split, info in result["splits"].items()}}


def skip_reason(config: RunConfig, run_dir: Path, epoch: int) -> str | None:
    """Why training epoch `epoch` should not run, or None.

    Epoch K trains after epoch K-1 is validated, so early stopping (faceattr.run.selection's
    rule, as `faceattr fit` applies it) sees epochs 1..K-1 and stops where fit stops.
    """
    if epoch > config.epochs:
        return f"this run trains {config.epochs} epoch(s)"
    if config.patience:
        reason = stop_reason(config, validation_scores(run_dir, config, range(1, epoch)))
        if reason:
            return f"early stop: {reason}"
    return None


def after_validation(params: Mapping[str, Any], dag_run_id: str, epoch: int, group_ids: list[str],
                     select_task: str) -> list[str]:
    """What follows epoch K's validation: `select_task` always, and epoch K+1's training unless the
    run ends here (its `epochs`, or early stopping by skip_reason). Not following K+1 is the one
    decision that skips every later epoch group: Airflow skips them without starting them, so the
    reason is logged here, on the last validation the run ran."""
    follow = [select_task]
    if epoch >= len(group_ids):
        return follow
    reason = skip_reason(run_context(params, dag_run_id).config, run_dir_for(params, dag_run_id), epoch + 1)
    if reason:
        log.info("epochs %d-%d skipped (%s to %s): %s", epoch + 1, len(group_ids), group_ids[epoch], group_ids[-1],
                 reason)
        return follow
    return follow + [f"{group_ids[epoch]}.train"]


def train(params: Mapping[str, Any], dag_run_id: str, epoch: int) -> dict:
    """Train one epoch from the previous epoch's checkpoint; raises Skip past the run's epochs or on early stop."""
    from faceattr.engine.distributed import launch_epoch  # torch: off the DAG-parse path

    with run_folder(params, dag_run_id, record=True) as run:
        reason = skip_reason(run.config, run.dir, epoch)
        if reason:
            raise skip(f"epoch {epoch} not trained: {reason}")
        eta = run_eta(run.config, epoch_seconds(run.dir), epoch)
        if eta is None:
            log.info("epoch %d/%d: run ETA known once an epoch is trained and validated", epoch, run.config.epochs)
        else:
            log.info("epoch %d/%d: run ETA %s (ends ~%s UTC; training and validation of the epochs left)", epoch,
                     run.config.epochs, duration(eta), f"{now() + dt.timedelta(seconds=eta):%H:%M}")
        result = launch_epoch(run.dir, epoch, run.config)
    # The loop's steady rate: the pass's own rate includes torch.compile's first step.
    return summary(result, "epoch", "loss", "accuracy", "images", "seconds", "loop_images_per_second", "checkpoint")


def validate(params: Mapping[str, Any], dag_run_id: str, epoch: int) -> dict:
    """Score epoch K's checkpoint on the validation split; record the epoch in the store."""
    from faceattr.engine.evaluate import evaluate_epoch  # torch, pandas: not at DAG parse time
    with run_folder(params, dag_run_id, record=True) as run:
        if not run.layout.checkpoint(epoch).is_file():
            raise skip(f"epoch {epoch} was not trained")
        result = evaluate_epoch(run.dir, epoch, "val", device=run.config.device)  # logs the summary line
    return summary(result, *_EVAL_SUMMARY)


def select(params: Mapping[str, Any], dag_run_id: str) -> dict:
    """Pick the best epoch (faceattr.run.selection's rule); write best.json and model.pt; log every epoch."""
    from faceattr.engine.selection import select_best  # torch, pandas: not at DAG parse time

    with run_folder(params, dag_run_id) as run:
        result = select_best(run.dir)
    measure = ranking_measure(run.config)
    scores = validation_scores(run.dir, run.config, run.layout.trained_epochs())
    log.info("selection: %s\n%s", rule_text(run.config), selection_table(scores, int(result["epoch"]), measure))
    return {**summary(result, "epoch", "val_mean_accuracy"), "model": str(run.layout.model)}


def selection_table(scores: Mapping[int, float], best: int, measure: str) -> str:
    """Every validated epoch's ranking figure as an aligned table, the chosen epoch marked."""
    lines = [f"epoch  val {measure}"]
    for epoch in sorted(scores):
        lines.append(f"{epoch:5d}  {scores[epoch]:.4f}" + ("  <- best" if epoch == best else ""))
    return "\n".join(lines)


def test(params: Mapping[str, Any], dag_run_id: str) -> dict:
    """Score the chosen model on the test split."""
    from faceattr.engine.evaluate import evaluate_epoch  # torch, pandas: not at DAG parse time
    with run_folder(params, dag_run_id, record=True) as run:
        result = evaluate_epoch(run.dir, "best", "test", device=run.config.device)  # logs the summary line
    return summary(result, *_EVAL_SUMMARY)


def report(params: Mapping[str, Any], dag_run_id: str) -> dict:
    """Write RUN/report/ (plots, table, HTML); the XCom lists the files relative to the run folder."""
    from faceattr.run.report import write_report  # torch, pandas: not at DAG parse time
    with run_folder(params, dag_run_id) as run:
        folder = write_report(run.dir)
    files = sorted(path.name for path in folder.iterdir() if path.is_file())
    log.info("report: %s/{%s}", folder, ",".join(files))
    return {"report": str(folder), "files": files}


def publish(params: Mapping[str, Any], dag_run_id: str) -> dict:
    """Record the finished run and let its model through the registry's gate: the call
    `faceattr models publish` makes (faceattr.store.registry.publish). The first model, and one that
    beats the champion (on the same evaluation set, or both re-scored on this run's test images the
    champion never saw), becomes champion; the summary says which, why and what was compared."""
    from faceattr.engine.rescore import mean_accuracy_on  # torch: off the DAG-parse path

    with run_folder(params, dag_run_id) as run, store() as opened:
        try:
            result = registry.publish(
                opened, run.dir, run_id=run.id, min_gain=params.get("promote_min_gain") or 0.0,
                force=params.get("promote") == "force", actor=f"faceattr_train {dag_run_id}",
                rescore=mean_accuracy_on, min_images=params.get("gate_min_images", registry.GATE_MIN_IMAGES),
            )
        except registry.RegistryError as exc:
            raise Refused(str(exc)) from None  # the same files would be refused again
    log.info("published %s (epoch %d, val %.4f, test %.4f): %s, %s", result["model"], result["epoch"],
             result["val_mean_accuracy"], result["test_mean_accuracy"], result["state"], result["reason"])
    return {**rounded(result), "dag_run_id": dag_run_id}


def champion_event(published: Mapping[str, Any]) -> dict:
    """The `faceattr/model` asset event's extra when publish made the run the champion; Skip otherwise,
    so no event fires and scheduled scoring keeps following the champion."""
    if not published.get("promoted"):
        raise skip(f"run {published['run']} is {published['state']}, not a new champion: {published['reason']}")
    return {key: published.get(key) for key in ("run", "dag_run_id", "epoch", "val_mean_accuracy",
                                                "test_mean_accuracy", "previous_champion", "reason", "model",
                                                "comparison", "sha256")}


def data_event(downloaded: Mapping[str, Any]) -> dict:
    """The `faceattr/data` asset event's extra when download acquired a new data version; Skip when
    the data was up to date, so no retrain starts."""
    if downloaded.get("status") != "downloaded":
        raise skip(f"data {downloaded.get('status')}: version {downloaded.get('version')}, nothing new")
    return {key: downloaded.get(key) for key in ("version", "previous_version", "counts", "changes", "source",
                                                 "root")}


def record_failure(dag_run_id: str, reason: str) -> None:
    """Mark a run failed in the store (the DAG's failure callback); never raises, the run has failed already."""
    run_id = sanitize_run_id(dag_run_id)
    try:
        with store() as opened:
            # Only the row: the callback runs in the dag-processor, which may have no run folders.
            row = opened.run(run_id)
            opened.upsert_run(run_id, run_dir=row["run_dir"], config=row["config"], status="failed",
                              finished_at=now())
        log.info("run %s recorded as failed (%s)", run_id, reason)
    except RunNotFoundError:
        log.info("run %s failed before it was recorded in the store (%s)", run_id, reason)
    except Exception:  # noqa: BLE001 - a callback must not hide the task's own error
        log.exception("could not record the failure of run %s (%s) in the store", run_id, reason)
