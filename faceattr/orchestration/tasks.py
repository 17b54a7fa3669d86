"""Task bodies for the Airflow DAGs in dags/: each takes plain values and returns a small summary.

The DAG files stay a table of contents; the logic lives here, importable and testable without a
scheduler. This module is imported when the DAG files are parsed, so it must stay light: torch,
torchvision, pandas and sklearn are imported inside the functions that need them (through the
library modules), never at the top.

Settings read when a DAG file is parsed (environment variables):
    FACEATTR_HOME           data folder; defaults for the dataset root, runs and scores (./data)
    FACEATTR_MAX_EPOCHS     number of train/validate task pairs in faceattr_train (12, the write-up's)
    FACEATTR_GPU_POOL       Airflow pool of the GPU tasks (gpu)
    FACEATTR_GPU_QUEUE      queue of the GPU tasks, for Celery deployments (default)
    FACEATTR_TRAIN_SCHEDULE faceattr_train's schedule, e.g. @weekly (none: triggered by hand)
    FACEATTR_SOURCE         default data source of the trigger form (none: use the root as it is)
    FACEATTR_STANDING_SET   images faceattr_score re-scores whenever a new model is published
and at run time FACEATTR_DATA_ROOTS (faceattr.data.access), FACEATTR_DB_URL (faceattr.store.store),
FACEATTR_ARTIFACTS (faceattr.run.artifacts: each task pulls its run folder from this object store
before it works and pushes what it wrote after; unset, run folders are local or shared paths)
and FACEATTR_WORLD_SIZE (faceattr.engine.distributed: DDP processes per training epoch).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import os
import re
from dataclasses import fields
from pathlib import Path
from typing import Any, Mapping

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from faceattr.run import artifacts
from faceattr.data.access import AccessError, check_path
from faceattr.config import KNOWN_ARCHS, ConfigError, RunConfig, save_or_check
from faceattr.fsutil import read_json
from faceattr.data.layout import ATTR_FILE, celeba_dir, images_dir
from faceattr.run.layout import RunLayout

log = logging.getLogger(__name__)

DEFAULT_MAX_EPOCHS = 12  # the write-up trained 12 epochs
MODEL_ASSET_NAME = "faceattr/model"
PRIVATE_CSV = "private_predictions.csv"


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


# -- settings read at parse time ----------------------------------------------------------------
def home() -> Path:
    """$FACEATTR_HOME (default ./data) as an absolute path."""
    return Path(os.path.abspath(os.environ.get("FACEATTR_HOME") or "data"))


def max_epochs() -> int:
    raw = os.environ.get("FACEATTR_MAX_EPOCHS", "").strip() or str(DEFAULT_MAX_EPOCHS)
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        raise ValueError(f"FACEATTR_MAX_EPOCHS: {raw!r} must be an integer from 1 to 1000")
    return int(raw)


def gpu_pool() -> str:
    return os.environ.get("FACEATTR_GPU_POOL", "").strip() or "gpu"


def gpu_queue() -> str:
    # LocalExecutor ignores queues; a Celery deployment sets "gpu" and runs a worker on it.
    return os.environ.get("FACEATTR_GPU_QUEUE", "").strip() or "default"


def train_schedule() -> str | None:
    value = os.environ.get("FACEATTR_TRAIN_SCHEDULE", "").strip()
    return None if value.lower() in ("", "none") else value


def standing_set() -> str | None:
    return os.environ.get("FACEATTR_STANDING_SET", "").strip() or None


def epoch_task_ids(prefix: str, count: int) -> list[str]:
    """train_epoch_01, train_epoch_02, ...: zero-padded so the Grid view sorts them."""
    width = max(2, len(str(count)))
    return [f"{prefix}_{epoch:0{width}d}" for epoch in range(1, count + 1)]


# -- trigger-form params ------------------------------------------------------------------------
_SECTIONS = {
    "Data": ("source", "root", "split", "seed"),
    "Model": ("arch", "weights", "freeze_children", "loss"),
    "Training": ("epochs", "batch_size", "lr", "weight_decay", "optimizer", "schedule", "patience",
                 "pos_weight", "tune_thresholds", "recalibrate_bn"),
    "Execution": ("device", "num_workers", "data_path", "compile"),
    "Outputs": ("output", "private_images"),
}
_DESCRIPTIONS = {
    "source": "Where to fetch CelebA from: a local folder in the official layout, an http(s) mirror, or 'gdrive'. "
              "Empty: use the dataset already in the root.",
    "root": "Dataset root: ROOT/celeba/{img_align_celeba/, list_attr_celeba.txt, ...} (torchvision's layout).",
    "split": "random: 80/10/10 with sklearn train_test_split (the write-up); official: CelebA's partition; "
             "identity: no person in two splits.",
    "seed": "Seeds the split, the initialisation and the shuffle.",
    "arch": "torchvision classification architecture; the write-up used resnext50_32x4d.",
    "weights": "imagenet (pretrained, as the write-up), none (from scratch), or the path of a state dict.",
    "freeze_children": "How many of the model's first children are frozen (the write-up froze 6).",
    "loss": "mse on ±1 labels with threshold 0 (the write-up), or bce on logits.",
    "epochs": "Epochs to train; the DAG has task slots up to FACEATTR_MAX_EPOCHS, the rest are skipped.",
    "batch_size": "Images per batch.",
    "lr": "Learning rate.",
    "weight_decay": "Weight decay.",
    "optimizer": "adamax (the write-up) or adamw.",
    "schedule": "Learning-rate schedule over the epochs.",
    "patience": "Stop after this many validated epochs without a better validation mean accuracy (0: never).",
    "pos_weight": "Weight each attribute's positives by its negatives/positives ratio (full) or its square root "
                  "(sqrt), for rare attributes; none: the write-up's unweighted loss.",
    "tune_thresholds": "Choose per-attribute thresholds on validation instead of 0.",
    "recalibrate_bn": "After each epoch, recompute BatchNorm statistics on this many unaugmented train images "
                      "(0: off). Fits them to evaluation's unzoomed images; costs a forward pass over them.",
    "device": "auto (CUDA when available), cpu, cuda or cuda:N.",
    "num_workers": "DataLoader workers; -1: one per core, at most 8.",
    "data_path": "How images are read: auto, pil (decode each epoch) or cache (decoded once).",
    "compile": "torch.compile the model; empty: on for CUDA, off on CPU.",
    "output": "Folder of run folders; this run writes <output>/<run id>/.",
    "private_images": "A folder or .zip of unlabelled images to predict with the chosen model (empty: skip).",
}


def train_params() -> dict[str, dict[str, Any]]:
    """faceattr_train's params as Param keyword arguments: default, description and JSON schema.

    Built from RunConfig.json_schema(), so the form and the library agree on every bound; the
    trigger form and `airflow dags test -c` refuse values outside them before any task runs.
    """
    schema = RunConfig.json_schema()
    defaults = RunConfig().to_dict()
    limit = max_epochs()
    defaults.update(root=str(home()), epochs=min(defaults["epochs"], limit))
    schema["epochs"] = {**schema["epochs"], "maximum": limit}
    schema["arch"] = {**schema["arch"], "enum": list(KNOWN_ARCHS)}
    schema["source"] = {"type": ["string", "null"]}
    schema["output"] = {"type": "string", "minLength": 1}
    schema["private_images"] = {"type": ["string", "null"]}
    defaults.update(
        source=os.environ.get("FACEATTR_SOURCE") or None,
        output=str(home() / "runs"),
        private_images=None,
    )
    params = {}
    for section, names in _SECTIONS.items():
        for name in names:
            params[name] = {
                "default": defaults[name],
                "description": _DESCRIPTIONS[name],
                "title": name.replace("_", " ").capitalize(),
                "section": section,
                **schema[name],
            }
    missing = set(schema) - set(params)
    if missing:  # a field added to RunConfig must get a place in the form
        raise RuntimeError(f"RunConfig field(s) {sorted(missing)} have no section in the faceattr_train form")
    return params


def score_params() -> dict[str, dict[str, Any]]:
    """faceattr_score's params (images default to the standing set, if one is configured)."""
    images = {
        "type": "string", "minLength": 1, "title": "Images",
        "description": "A folder or .zip of images to score; must lie under FACEATTR_DATA_ROOTS.",
    }
    if standing_set():  # runs started by a new model (no conf) score the standing set
        images["default"] = standing_set()
    return {
        "images": images,
        "output": {
            "default": None, "type": ["string", "null"], "title": "Output CSV",
            "description": "The predictions CSV (errors go beside it as <name>.errors.csv); "
                           "empty: $FACEATTR_HOME/scores/<run id>.csv. Must lie under FACEATTR_DATA_ROOTS.",
        },
        "model": {
            "default": "latest", "type": "string", "minLength": 1, "title": "Model",
            "description": "latest (the current published model) or the run id of a published model.",
        },
        "batch_size": {"default": 128, "type": "integer", "minimum": 1, "maximum": 65536, "title": "Batch size",
                       "description": "Images per batch."},
        "device": {"default": "auto", "type": "string", "minLength": 1, "title": "Device",
                   "description": "auto (CUDA when available), cpu, cuda or cuda:N."},
        "scores": {"default": False, "type": "boolean", "title": "Scores",
                   "description": "Add each attribute's raw score as a column."},
    }


# -- run context ------------------------------------------------------------------------------
def sanitize_run_id(run_id: str) -> str:
    """A folder name from an Airflow run id: manual__2025-01-01T00:00:00+00:00 -> manual__2025-01-01T00-00-00-00-00."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", str(run_id)).strip(".-")
    if not name:
        raise ValueError(f"run id {run_id!r} has no usable characters for a folder name")
    return name


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


def run_context(params: Mapping[str, Any], dag_run_id: str) -> tuple[RunConfig, Path]:
    """The run's config and folder; wrong settings are Refused (no retry)."""
    with refuse_bad_settings():
        return config_from_params(params), run_dir_for(params, dag_run_id)


def check_conf(conf: Mapping[str, Any] | None, known: set[str]) -> None:
    """Refuse keys in the trigger conf that no param takes: a typo would otherwise be ignored."""
    unknown = sorted(set(conf or {}) - known)
    if unknown:
        raise ConfigError(f"DAG run conf: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _store():
    from faceattr.store.store import Store

    return Store.from_env()


_EVAL_SUMMARY = ("epoch", "images", "mean_accuracy", "majority_baseline", "mean_balanced_accuracy", "mean_f1")


def _summary(result: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    """The named entries of a library result as plain JSON values: a task's small XCom summary."""
    out = {}
    for key in keys:
        value = result.get(key)
        out[key] = str(value) if isinstance(value, Path) else value
    return out


# -- faceattr_train tasks ---------------------------------------------------------------------
def download(params: Mapping[str, Any], conf: Mapping[str, Any] | None = None) -> dict:
    """Check the run's settings, then fetch and verify the dataset into the root (idempotent).

    Only fetching is worth retrying: bad settings fail at once (Refused).
    """
    with refuse_bad_settings():
        check_conf(conf, set(train_params()))
        config = config_from_params(params)
        check_path(params["output"], "output")
        source = params.get("source")
        if source and "://" not in source and source != "gdrive":
            source = str(check_path(source, "source"))
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

    from faceattr.data.download import acquire

    result = acquire(source, root)
    log.info("download: %s from %s into %s: %s", result["status"], result["source"], root, result["counts"])
    return _summary(result, "status", "source", "root", "counts", "seconds")


def split(params: Mapping[str, Any], dag_run_id: str) -> dict:
    """Start the run folder: save config.json (or check it matches) and write split.csv."""
    from faceattr.data.split import make_split

    config, run_dir = run_context(params, dag_run_id)
    artifacts.pull(run_dir)  # a retry on another worker checks the saved config.json
    save_or_check(config, run_dir)
    result = make_split(Path(config.root), config.split, config.seed, run_dir)
    artifacts.push(run_dir)
    with _store() as store:
        store.upsert_run(sanitize_run_id(dag_run_id), run_dir=str(run_dir), config=config.to_dict(),
                         status="running", dag_run_id=dag_run_id, started_at=_now())
    log.info("split: %s -> %s", {k: result[k] for k in ("train", "val", "test")}, result["path"])
    return {"run_dir": str(run_dir), **_summary(result, "train", "val", "test", "strategy", "path")}


def cache_images(params: Mapping[str, Any], dag_run_id: str) -> dict:
    """Decode the run's images once into RUN/cache/ when its training reads the fast path.

    It runs on the GPU queue because the cache is read from the training worker's local disk; a
    run on the PIL path ("pil", or "auto" on a CPU) needs none and returns at once.
    """
    from faceattr.data.cache import build_cache
    from faceattr.runtime import resolve_device

    config, run_dir = run_context(params, dag_run_id)
    device = resolve_device(config.device)
    if not (config.data_path == "cache" or (config.data_path == "auto" and device.type == "cuda")):
        reason = f"not needed: data_path {config.data_path!r} on {device.type} decodes JPEGs per batch"
        log.info("cache: %s", reason)
        return {"run_dir": str(run_dir), "status": reason}
    artifacts.pull(run_dir)
    result = build_cache(run_dir)
    log.info("cache: %s", {split: info["status"] for split, info in result["splits"].items()})
    return {"run_dir": str(run_dir), "bytes": result["bytes"],
            **{split: info["images"] for split, info in result["splits"].items()}}


def epochs_without_gain(val_by_epoch: Mapping[int, float]) -> int:
    """Validated epochs in a row, at the end, that did not beat the best before them."""
    best, stale = -math.inf, 0
    for epoch in sorted(val_by_epoch):
        if val_by_epoch[epoch] > best:
            best, stale = val_by_epoch[epoch], 0
        else:
            stale += 1
    return stale


def validated_epochs(run_dir: Path, upto: int) -> dict[int, float]:
    """Validation mean accuracy of epochs 1..upto that have been validated."""
    layout = RunLayout(run_dir)
    found = {}
    for epoch in range(1, upto + 1):
        path = layout.metrics("val", epoch)
        if path.is_file():
            found[epoch] = float(read_json(path)["mean_accuracy"])
    return found


def skip_reason(config: RunConfig, run_dir: Path, epoch: int) -> str | None:
    """Why training epoch `epoch` should not run, or None.

    Training epoch K waits for validation of epoch K-2 only, so validating K-1 can overlap it;
    early stopping therefore looks at epochs 1..K-2 and may train one epoch past the point
    where `faceattr fit` stops. That epoch is validated too, so selection still sees every
    checkpoint.
    """
    if epoch > config.epochs:
        return f"this run trains {config.epochs} epoch(s)"
    if config.patience:
        val = validated_epochs(run_dir, epoch - 2)
        stale = epochs_without_gain(val)
        if stale >= config.patience:
            best = max(val, key=lambda k: (val[k], -k))
            return (f"early stop: {stale} validated epoch(s) without beating epoch {best}'s "
                    f"{val[best]:.4f} (patience {config.patience})")
    return None


def train(params: Mapping[str, Any], dag_run_id: str, epoch: int) -> dict:
    """Train one epoch from the previous epoch's checkpoint; raises Skip past the run's epochs or on early stop."""
    from faceattr.engine.distributed import train_epoch  # one process, or DDP over the worker's GPUs

    config, run_dir = run_context(params, dag_run_id)
    artifacts.pull(run_dir)
    reason = skip_reason(config, run_dir, epoch)
    if reason:
        raise Skip(f"epoch {epoch} not trained: {reason}")
    result = train_epoch(run_dir, epoch, config)
    artifacts.push(run_dir)
    return _summary(result, "epoch", "loss", "accuracy", "images", "seconds", "images_per_second", "checkpoint")


def validate(params: Mapping[str, Any], dag_run_id: str, epoch: int) -> dict:
    """Score epoch K's checkpoint on the validation split; record the epoch in the store."""
    from faceattr.engine.evaluate import evaluate_epoch

    config, run_dir = run_context(params, dag_run_id)
    artifacts.pull(run_dir)
    if not RunLayout(run_dir).checkpoint(epoch).is_file():
        raise Skip(f"epoch {epoch} was not trained")
    result = evaluate_epoch(run_dir, epoch, "val", device=config.device)
    artifacts.push(run_dir)
    with _store() as store:
        store.sync_run_dir(sanitize_run_id(dag_run_id), run_dir)
    log.info("epoch %d: val mean accuracy %.4f (majority baseline %.4f)",
             epoch, result["mean_accuracy"], result["majority_baseline"])
    return _summary(result, *_EVAL_SUMMARY)


def select(params: Mapping[str, Any], dag_run_id: str) -> dict:
    """Pick the epoch with the best validation mean accuracy; write best.json and model.pt."""
    from faceattr.engine.evaluate import select_best

    _, run_dir = run_context(params, dag_run_id)
    artifacts.pull(run_dir)
    result = select_best(run_dir)
    artifacts.push(run_dir)
    log.info("best epoch %s (val mean accuracy %.4f) -> %s", result["epoch"], result["val_mean_accuracy"],
             RunLayout(run_dir).model)
    return {**_summary(result, "epoch", "val_mean_accuracy"), "model": str(RunLayout(run_dir).model)}


def test(params: Mapping[str, Any], dag_run_id: str) -> dict:
    """Score the chosen model on the test split."""
    from faceattr.engine.evaluate import evaluate_epoch

    config, run_dir = run_context(params, dag_run_id)
    artifacts.pull(run_dir)
    result = evaluate_epoch(run_dir, "best", "test", device=config.device)
    artifacts.push(run_dir)
    with _store() as store:
        store.sync_run_dir(sanitize_run_id(dag_run_id), run_dir)
    log.info("test: mean accuracy %.4f (majority baseline %.4f) on %d images",
             result["mean_accuracy"], result["majority_baseline"], result["images"])
    return _summary(result, *_EVAL_SUMMARY)


def report(params: Mapping[str, Any], dag_run_id: str) -> dict:
    """Write RUN/report/ (plots, table, HTML) and log where each file is."""
    from faceattr.run.report import write_report

    run_dir = run_context(params, dag_run_id)[1]
    artifacts.pull(run_dir)
    folder = write_report(run_dir)
    artifacts.push(run_dir)
    files = sorted(str(path) for path in folder.iterdir() if path.is_file())
    for path in files:
        log.info("report: %s", path)
    return {"report": str(folder), "files": files}


def publish(params: Mapping[str, Any], dag_run_id: str) -> dict:
    """Record the finished run and make its model the current one; the summary becomes the Asset event's extra."""
    _, run_dir = run_context(params, dag_run_id)
    artifacts.pull(run_dir)
    layout = RunLayout(run_dir)
    run_id = sanitize_run_id(dag_run_id)
    best = read_json(layout.best)
    epoch = int(best["epoch"])
    tested = read_json(layout.metrics("test", epoch))
    with _store() as store:
        store.sync_run_dir(run_id, run_dir, status="success", finished_at=_now())
        store.upsert_model(
            run_id, epoch, str(layout.model),
            val_mean_accuracy=float(best["val_mean_accuracy"]),
            test_mean_accuracy=float(tested["mean_accuracy"]),
            published=True, make_current=True,
        )
    summary = {
        "run": run_id,
        "dag_run_id": dag_run_id,
        "epoch": epoch,
        "val_mean_accuracy": float(best["val_mean_accuracy"]),
        "test_mean_accuracy": float(tested["mean_accuracy"]),
        "test_majority_baseline": float(tested["majority_baseline"]),
        "model": str(layout.model),
    }
    log.info("published %s: epoch %d, val %.4f, test %.4f", layout.model, epoch,
             summary["val_mean_accuracy"], summary["test_mean_accuracy"])
    return summary


def score_private(params: Mapping[str, Any], dag_run_id: str) -> dict:
    """Predict the private images with this run's model into RUN/private_predictions.csv (skipped without them)."""
    images = params.get("private_images")
    if not images:
        raise Skip("no private images given (param private_images)")
    config, run_dir = run_context(params, dag_run_id)
    artifacts.pull(run_dir)
    model = {"path": str(RunLayout(run_dir).model), "run_id": sanitize_run_id(dag_run_id),
             "epoch": int(read_json(RunLayout(run_dir).best)["epoch"])}
    result = score(images, str(run_dir / PRIVATE_CSV), model, job_id=f"{model['run_id']}-private",
                   device=config.device)
    artifacts.push(run_dir)
    return result


def record_failure(dag_run_id: str, reason: str) -> None:
    """Mark a run failed in the store (the DAG's failure callback); never raises, the run has failed already."""
    from faceattr.store.store import RunNotFoundError

    run_id = sanitize_run_id(dag_run_id)
    try:
        with _store() as store:
            run_dir = store.run(run_id)["run_dir"]
            store.sync_run_dir(run_id, run_dir, status="failed", finished_at=_now())
        log.info("run %s recorded as failed (%s)", run_id, reason)
    except RunNotFoundError:
        log.info("run %s failed before it was recorded in the store (%s)", run_id, reason)
    except Exception:  # noqa: BLE001 - a callback must not hide the task's own error
        log.exception("could not record the failure of run %s (%s) in the store", run_id, reason)


# -- scoring ----------------------------------------------------------------------------------
def default_score_csv(dag_run_id: str) -> str:
    return str(home() / "scores" / f"{sanitize_run_id(dag_run_id)}.csv")


def resolve_model(model: str) -> dict:
    """`latest` -> the store's current model; a run id -> that run's published model (the best epoch's).

    Returns {"path", "run_id", "epoch"}.
    """
    from faceattr.store.store import RunNotFoundError

    with _store() as store:
        if model == "latest":
            found = store.current_model()
            if found is None:
                raise FileNotFoundError("model 'latest': no model has been published yet; run faceattr_train first")
        else:
            try:
                run = store.run(model)
            except RunNotFoundError as exc:
                raise FileNotFoundError(f"model {model!r}: {exc}; give 'latest' or a run id") from None
            published = [m for m in run["models"] if m["published"]]
            if not published:
                raise FileNotFoundError(f"model {model!r}: that run has no published model")
            found = published[-1]
    path = Path(found["path"])
    if not path.is_file():
        raise FileNotFoundError(f"model {model!r}: {path} is recorded in the store but missing on disk")
    return {"path": str(path), "run_id": found["run_id"], "epoch": int(found["epoch"])}


def check_score_request(images: str, output: str | None, model: str, dag_run_id: str) -> dict:
    """Resolve and check a scoring request before anything is read or written.

    Returns {"images", "output", "model": {"path", "run_id", "epoch"}} for the scoring task.
    """
    images_path = check_path(images, "images")
    output_path = check_path(output or default_score_csv(dag_run_id), "output")
    if output_path.suffix.lower() != ".csv":
        raise ValueError(f"output: {output_path} must end in .csv")
    if not images_path.exists():
        raise FileNotFoundError(f"images: {images_path} does not exist")
    if not (images_path.is_dir() or images_path.suffix.lower() == ".zip"):
        raise ValueError(f"images: {images_path} is neither a folder nor a .zip")
    return {"images": str(images_path), "output": str(output_path), "model": resolve_model(model)}


def score(images: str, output: str, model: Mapping[str, Any], *, job_id: str, batch_size: int = 128,
          device: str | None = None, scores: bool = False) -> dict:
    """Predict every image under `images` into `output` (and its .errors.csv), recorded as a scoring job.

    `model` is resolve_model's {"path", "run_id", "epoch"}. Rows + errors = files seen (faceattr.engine.predict).
    """
    from faceattr.engine.predict import predict

    images_path = check_path(images, "images")
    output_path = check_path(output, "output")
    job = {"model_path": str(model["path"]), "model_run_id": model["run_id"], "model_epoch": int(model["epoch"]),
           "input_path": str(images_path), "output_csv": str(output_path)}
    with _store() as store:
        store.upsert_scoring_job(job_id, status="running", started_at=_now(), **job)
    try:
        result = predict(Path(model["path"]), images_path, output_path, scores=scores, batch_size=batch_size,
                         device=None if device in (None, "auto") else device)
    except Exception as exc:
        with _store() as store:
            store.upsert_scoring_job(job_id, status="failed", finished_at=_now(),
                                     message=f"{type(exc).__name__}: {exc}", **job)
        raise
    with _store() as store:
        store.upsert_scoring_job(
            job_id, status="success", finished_at=_now(), images=int(result["images"]), rows=int(result["rows"]),
            errors=int(result["errors"]), errors_csv=str(result["errors_csv"]), **job,
        )
    log.info("scored %d image(s): %d row(s) -> %s, %d error(s) -> %s", result["images"], result["rows"],
             result["csv"], result["errors"], result["errors_csv"])
    return {"job_id": job_id, **_summary(result, "images", "rows", "errors", "csv", "errors_csv"),
            "model": str(model["path"])}
