"""Value checks of the run store: every bad value is refused with the field's name.

Used by the Store's upserts and by sync (run folder -> rows), so a figure is checked the same way
whichever path brings it in.
"""
from __future__ import annotations

import json
import math
import os
from datetime import datetime, timezone
from typing import Any

from faceattr.attributes import ATTRIBUTES, SPLITS

# Airflow's DagRunState / TaskInstanceState names, so a task can pass its state through.
STATES = ("queued", "running", "success", "failed")


def number(name: str, value: Any, *, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    value = float(value)
    if not math.isnan(value) and ((low is not None and value < low) or (high is not None and value > high)):
        raise ValueError(f"{name}: {value!r} is outside [{low}, {high}]")
    return value


def count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name}: expected a non-negative integer, got {value!r}")
    return value


def nonempty(name: str, value: Any) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name}: expected a non-empty string, got {value!r}")
    return value


def message(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name}: expected a string, got {value!r}")
    return value


def state(name: str, value: Any) -> str:
    if value not in STATES:
        raise ValueError(f"{name}: {value!r} is not one of {', '.join(STATES)}")
    return value


def utc_time(name: str, value: Any) -> datetime:
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


def fraction(name: str, value: Any) -> float:
    return number(name, value, low=0.0, high=1.0)


def nonnegative(name: str, value: Any) -> float:
    return number(name, value, low=0.0)


EPOCH_FIGURES = {
    "train_loss": number,
    "train_accuracy": fraction,
    "train_images": count,
    "seconds": nonnegative,
    "images_per_second": nonnegative,
    "val_mean_accuracy": fraction,
    "val_majority_baseline": fraction,
    "test_mean_accuracy": fraction,
}
ATTRIBUTE_FIGURES = {"accuracy": fraction, "balanced_accuracy": fraction, "f1": fraction}
JOB_FIELDS = {
    "model_path": nonempty,
    "model_run_id": nonempty,
    "model_epoch": count,
    "model_sha256": nonempty,
    "input_path": nonempty,
    "output_csv": nonempty,
    "errors_csv": nonempty,
    "images": count,
    "rows": count,
    "errors": count,
    "status": state,
    "started_at": utc_time,
    "finished_at": utc_time,
    "message": message,
}


def checked(fields: dict[str, Any], checks: dict[str, Any], what: str) -> dict[str, Any]:
    """Apply the check of each given field; None means 'leave as it is' and is dropped."""
    unknown = sorted(set(fields) - set(checks))
    if unknown:
        raise ValueError(f"{what}: unknown field(s) {', '.join(unknown)}; known: {', '.join(checks)}")
    return {name: checks[name](name, value) for name, value in fields.items() if value is not None}


def epoch_number(value: Any) -> int:
    return count("epoch", value)


def field(data: dict[str, Any], name: str) -> Any:
    if name not in data:
        raise KeyError(f"missing field {name!r}")
    return data[name]


def attribute_rows(run_id: str, epoch: Any, split: str, attributes: Any, *, where: str) -> list[dict[str, Any]]:
    prefix = f"{where}: " if where else ""
    if split not in SPLITS:
        raise ValueError(f"{prefix}split {split!r} is not one of {', '.join(SPLITS)}")
    epoch = epoch_number(epoch)
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
            row["majority_baseline"] = fraction(f"attributes.{name}.majority_baseline", figures["majority_baseline"])
        rows.append(row)
    return rows


def json_object(name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{name}: expected a JSON object (dict), got {type(value).__name__}")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: not JSON-serialisable ({exc})") from None
    return value
