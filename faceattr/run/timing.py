"""How long a run has taken and how long it has left: the task log and the UI's Run page say the same."""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Mapping

from faceattr.run import metrics
from faceattr.run.config import RunConfig


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def epoch_seconds(run_dir: Path) -> dict[int, float]:
    """Wall seconds of each trained and validated epoch: training plus validation, from their metrics."""
    found = metrics.all_epoch_metrics(run_dir)
    return {epoch: float(data.get("seconds") or 0.0) + float(found["val"][epoch].get("seconds") or 0.0)
            for epoch, data in found["train"].items() if epoch in found["val"]}


def run_eta(config: RunConfig, seconds: Mapping[int, float], epoch: int) -> float | None:
    """Seconds left before epoch `epoch` starts until the last planned epoch is validated: the mean
    epoch so far times the epochs left (None before the first epoch is done). Early stopping may end sooner."""
    if not seconds:
        return None
    return sum(seconds.values()) / len(seconds) * max(0, config.epochs - epoch + 1)


def duration(seconds: float) -> str:
    """12 s, 4 min 05 s, 2 h 03 min: how long, for a person."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
