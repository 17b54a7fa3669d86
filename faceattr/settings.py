"""Every FACEATTR_* environment variable, read in one place.

Each function reads its variable when called (tests and DAG re-parses change the environment), and
a wrong value raises ValueError naming the variable. The bottom layer of the package: it imports
nothing from faceattr, so any module may ask it.

Read when a DAG file is parsed: HOME, MAX_EPOCHS, GPU_POOL, GPU_QUEUE, GPU_RETRY_DELAY_S,
TRAIN_SCHEDULE, TRAIN_ON_DATA, DATA_SCHEDULE, SOURCE, STANDING_SET. Read by the worker that runs a
task: HOME, DATA_ROOTS, DB_URL, ARTIFACTS, WORLD_SIZE.
"""
from __future__ import annotations

import os
from pathlib import Path

HOME = "FACEATTR_HOME"
DATA_ROOTS = "FACEATTR_DATA_ROOTS"
DB_URL = "FACEATTR_DB_URL"
ARTIFACTS = "FACEATTR_ARTIFACTS"
WORLD_SIZE = "FACEATTR_WORLD_SIZE"
MAX_EPOCHS = "FACEATTR_MAX_EPOCHS"
GPU_POOL = "FACEATTR_GPU_POOL"
GPU_QUEUE = "FACEATTR_GPU_QUEUE"
GPU_RETRY_DELAY_S = "FACEATTR_GPU_RETRY_DELAY_S"
TRAIN_SCHEDULE = "FACEATTR_TRAIN_SCHEDULE"
TRAIN_ON_DATA = "FACEATTR_TRAIN_ON_DATA"
DATA_SCHEDULE = "FACEATTR_DATA_SCHEDULE"
SOURCE = "FACEATTR_SOURCE"
STANDING_SET = "FACEATTR_STANDING_SET"

DEFAULT_MAX_EPOCHS = 12  # the write-up trained 12 epochs
DEFAULT_GPU_RETRY_DELAY_S = 60


def _get(name: str) -> str:
    return os.environ.get(name, "").strip()


def home() -> Path:
    """FACEATTR_HOME: the data folder, holding the default dataset root, runs/, scores/ and the
    SQLite run store (default ./data), as an absolute path."""
    return Path(os.path.abspath(_get(HOME) or "data"))


def data_roots() -> str:
    """FACEATTR_DATA_ROOTS: the folders DAG runs may read and write, os.pathsep-separated like PATH
    ("" when unset; faceattr.data.access parses, resolves and insists on it)."""
    return os.environ.get(DATA_ROOTS, "")


def db_url() -> str | None:
    """FACEATTR_DB_URL: the run store's SQLAlchemy URL (SQLite or PostgreSQL); None: the default
    SQLite file $FACEATTR_HOME/faceattr.db (faceattr.store)."""
    return _get(DB_URL) or None


def artifacts() -> str | None:
    """FACEATTR_ARTIFACTS: an fsspec URL (s3://bucket/prefix) that each task pulls its run folder
    from and pushes it back to; None: run folders are local or shared paths."""
    return _get(ARTIFACTS).rstrip("/") or None


def world_size() -> int | None:
    """FACEATTR_WORLD_SIZE: DDP processes per training epoch; None for "auto" (the default: every
    visible GPU when the run's device allows, faceattr.engine.distributed decides)."""
    raw = _get(WORLD_SIZE).lower() or "auto"
    if raw == "auto":
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{WORLD_SIZE}: {raw!r} must be 'auto' or a number of processes >= 1")
    return int(raw)


def max_epochs() -> int:
    """FACEATTR_MAX_EPOCHS: how many epoch task groups faceattr_train has (12, the write-up's); a
    run's `epochs` may not exceed it."""
    raw = _get(MAX_EPOCHS) or str(DEFAULT_MAX_EPOCHS)
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        raise ValueError(f"{MAX_EPOCHS}: {raw!r} must be an integer from 1 to 1000")
    return int(raw)


def gpu_pool() -> str:
    """FACEATTR_GPU_POOL: the Airflow pool of the GPU tasks (gpu)."""
    return _get(GPU_POOL) or "gpu"


def gpu_queue() -> str:
    """FACEATTR_GPU_QUEUE: the queue of the GPU tasks (default). LocalExecutor ignores queues; a
    Celery deployment sets "gpu" and runs a worker on it."""
    return _get(GPU_QUEUE) or "default"


def gpu_retry_delay_s() -> int:
    """FACEATTR_GPU_RETRY_DELAY_S: seconds before a failed train or validate task (a lost worker,
    a GPU error) runs again, from the previous epoch's checkpoint (default 60)."""
    raw = _get(GPU_RETRY_DELAY_S) or str(DEFAULT_GPU_RETRY_DELAY_S)
    if not raw.isdigit() or int(raw) > 86_400:
        raise ValueError(f"{GPU_RETRY_DELAY_S}: {raw!r} must be a whole number of seconds from 0 to 86400")
    return int(raw)


def train_schedule() -> str | None:
    """FACEATTR_TRAIN_SCHEDULE: faceattr_train's schedule, e.g. @weekly; None ("" or "none"):
    triggered by hand."""
    value = _get(TRAIN_SCHEDULE)
    return None if value.lower() in ("", "none") else value


def train_on_data() -> bool:
    """FACEATTR_TRAIN_ON_DATA: 1/true/yes: faceattr_train also runs when a new data version lands
    (the faceattr/data asset), besides FACEATTR_TRAIN_SCHEDULE's times; default off."""
    value = _get(TRAIN_ON_DATA).lower()
    if value not in ("", "0", "1", "true", "false", "yes", "no"):
        raise ValueError(f"{TRAIN_ON_DATA}: {value!r} is not one of 1, 0, true, false, yes, no")
    return value in ("1", "true", "yes")


def data_schedule() -> str | None:
    """FACEATTR_DATA_SCHEDULE: how often faceattr_data checks the source for new data, e.g. @daily;
    None ("" or "none"): checked when triggered."""
    value = _get(DATA_SCHEDULE)
    return None if value.lower() in ("", "none") else value


def source() -> str | None:
    """FACEATTR_SOURCE: the trigger form's default data source (a folder, a mirror URL or
    'gdrive'); None: use the dataset already in the root."""
    return _get(SOURCE) or None


def standing_set() -> str | None:
    """FACEATTR_STANDING_SET: images faceattr_score re-scores whenever a new model is published;
    None: faceattr_score runs only when triggered."""
    return _get(STANDING_SET) or None
