"""Every path inside one run folder (the one place that spells them).

    RUN/config.json                   the RunConfig
    RUN/split.csv                     image_id,split (train|val|test)
    RUN/data_version.json             the data version split.csv was made from (faceattr.data.versions)
    RUN/checkpoints/epoch_K.pt        one per trained epoch
    RUN/metrics/{split}_epoch_K.json  train figures, val/test evaluations (faceattr.run.metrics)
    RUN/metrics/val_epoch_K.npz       raw validation scores, kept for threshold tuning
    RUN/best.json, RUN/model.pt       the selected epoch and its inference artefact
    RUN/private_predictions.csv       the private images scored with model.pt
    RUN/report/, RUN/cache/{split}.npy|.json
    RUN/.lock                         held by the one process working in the folder (faceattr.run.lock)
"""
from __future__ import annotations

import re
from pathlib import Path

from faceattr.attributes import SPLITS

# A run folder's name: what sanitize_run_id makes of a DAG run id (Airflow allows 250 characters).
RUN_FOLDER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,249}")


def sanitize_run_id(run_id: str) -> str:
    """A folder name from an Airflow run id: manual__2025-01-01T00:00:00+00:00 -> manual__2025-01-01T00-00-00-00-00."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", str(run_id)).strip(".-")
    if not name:
        raise ValueError(f"run id {run_id!r} has no usable characters for a folder name")
    return name


_METRICS_NAME = re.compile(r"^(%s)_epoch_(\d+)\.json$" % "|".join(SPLITS))


def parse_metrics_name(name: str) -> tuple[str, int] | None:
    """(split, epoch) of a metrics file name such as "val_epoch_3.json"; None for any other name
    (a temporary file of an interrupted write, the .npz scores, unrelated files)."""
    match = _METRICS_NAME.match(name)
    return None if match is None else (match.group(1), int(match.group(2)))


class RunLayout:
    """Paths inside one run folder."""

    def __init__(self, run_dir: str | Path):
        self.root = Path(run_dir)

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def split(self) -> Path:
        return self.root / "split.csv"

    @property
    def data_version(self) -> Path:
        return self.root / "data_version.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint(self, epoch: int) -> Path:
        return self.checkpoints / f"epoch_{epoch}.pt"

    @property
    def metrics_dir(self) -> Path:
        return self.root / "metrics"

    def metrics(self, split: str, epoch: int) -> Path:
        return self.metrics_dir / f"{split}_epoch_{epoch}.json"

    def scores(self, split: str, epoch: int) -> Path:
        """Raw scores and labels of one evaluation (.npz), kept for threshold tuning."""
        return self.metrics_dir / f"{split}_epoch_{epoch}.npz"

    @property
    def best(self) -> Path:
        return self.root / "best.json"

    @property
    def model(self) -> Path:
        return self.root / "model.pt"

    @property
    def private_predictions(self) -> Path:
        return self.root / "private_predictions.csv"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def cache_files(self, split: str) -> tuple[Path, Path]:
        """(RUN/cache/{split}.npy, RUN/cache/{split}.json): the decoded images and their index."""
        return self.cache / f"{split}.npy", self.cache / f"{split}.json"

    def trained_epochs(self) -> list[int]:
        """Epoch numbers that have a checkpoint, ascending."""
        found = []
        for path in self.checkpoints.glob("epoch_*.pt"):
            suffix = path.stem.removeprefix("epoch_")
            if suffix.isdigit():
                found.append(int(suffix))
        return sorted(found)
