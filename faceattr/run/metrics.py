"""The run folder's metrics: one reader and writer for RUN/metrics/ and RUN/best.json.

    RUN/metrics/train_epoch_K.json   written by training: loss, accuracy, images, seconds, ...
    RUN/metrics/{val,test}_epoch_K.json  written by evaluation: mean_accuracy, majority_baseline,
                                     attributes {name: {accuracy, balanced_accuracy, f1, ...}}, ...
    RUN/metrics/val_epoch_K.npz      raw validation scores (scores_path), for threshold tuning
    RUN/best.json                    the selected epoch: epoch, val_mean_accuracy, val_by_epoch, ...

The test metrics are what the publish gate reads, so they are guarded like checkpoints: written
with `<file>.sha256` beside them and, for the selected epoch, the sha256 of the RUN/model.pt they
measured (`model_sha256`). `read_test_metrics` refuses a file changed after it was written.

Every file carries its own "epoch" and "split"; a reader checks them against the file name, so a
file copied under the wrong name is refused instead of being counted as another epoch. What each
figure means is the writer's business (train, evaluate, select); this module guarantees the
shape every reader relies on.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, TypedDict

from faceattr.attributes import SPLITS
from faceattr.fsutil import ChecksumError, digest_path, read_json, sha256_of, verify_digest, write_digest, write_json
from faceattr.run.layout import RunLayout, parse_metrics_name


class Best(TypedDict, total=False):
    epoch: int                      # required
    val_mean_accuracy: float        # required
    val_by_epoch: dict[str, float]  # epoch number (as a string: JSON keys) -> val mean accuracy
    val_mean_accuracy_tuned: float  # with tune_thresholds: measured on the tuning data


def check_split(split: Any) -> str:
    if split not in SPLITS:
        raise ValueError(f"split: {split!r} is not one of {', '.join(SPLITS)}")
    return split


def check_epoch(epoch: Any, name: str = "epoch") -> int:
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
        raise ValueError(f"{name}: expected an epoch number (an integer, 1 or more), got {epoch!r}")
    return epoch


def scores_path(run_dir: str | Path, split: str, epoch: int) -> Path:
    """RUN/metrics/{split}_epoch_K.npz: the raw scores and labels of one evaluation."""
    return RunLayout(run_dir).scores(check_split(split), check_epoch(epoch))


def write_epoch_metrics(run_dir: str | Path, split: str, epoch: int, data: dict[str, Any]) -> Path:
    """Write RUN/metrics/{split}_epoch_K.json (atomically), stamped with its epoch and split."""
    split, epoch = check_split(split), check_epoch(epoch)
    path = RunLayout(run_dir).metrics(split, epoch)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: metrics must be a dict, got {type(data).__name__}")
    for key, expected in (("epoch", epoch), ("split", split)):
        if data.get(key, expected) != expected:
            raise ValueError(f"{path}: {key} {data[key]!r} does not match the file's {expected!r}")
    data = {**data, "epoch": epoch, "split": split}
    if split != "test":
        return write_json(path, data)
    if "model_sha256" not in data:
        data["model_sha256"] = _selected_model_sha256(run_dir, epoch)
    digest_path(path).unlink(missing_ok=True)  # the old digest must not outlive the old file
    write_json(path, data)
    write_digest(path)
    return path


def _selected_model_sha256(run_dir: str | Path, epoch: int) -> str | None:
    """The sha256 of RUN/model.pt when it is this epoch's (best.json names it): the model tested."""
    layout = RunLayout(run_dir)
    best = read_best(run_dir) if layout.best.is_file() else None
    if best is None or best["epoch"] != epoch or not layout.model.is_file():
        return None
    return sha256_of(layout.model)


def read_test_metrics(run_dir: str | Path, epoch: int) -> dict[str, Any]:
    """RUN/metrics/test_epoch_K.json, refused (ChecksumError) unless it matches the digest written with it."""
    path = RunLayout(run_dir).metrics("test", check_epoch(epoch))
    data = read_epoch_metrics(run_dir, "test", epoch)
    again = f"run 'faceattr evaluate --run {run_dir} --epoch best --split test' again"
    try:
        verified = verify_digest(path)
    except ChecksumError as exc:
        raise ChecksumError(f"{str(exc).split('; the file was')[0]}: it changed after test wrote it; {again}") from None
    if not verified:
        raise ChecksumError(f"{path}: has no {digest_path(path).name} (written before test metrics carried one, or "
                            f"by hand); {again}")
    return data


def read_epoch_metrics(run_dir: str | Path, split: str, epoch: int, *, missing_ok: bool = False) -> dict | None:
    """The contents of RUN/metrics/{split}_epoch_K.json, checked; None if absent and missing_ok."""
    path = RunLayout(run_dir).metrics(check_split(split), check_epoch(epoch))
    if missing_ok and not path.is_file():
        return None
    return _checked(path, read_json(path), split, epoch)


def all_epoch_metrics(run_dir: str | Path) -> dict[str, dict[int, dict[str, Any]]]:
    """Every metrics file of the run: {split: {epoch: contents}}, each split's epochs ascending.
    Files whose names are not metrics file names (temporary files, .npz scores) are skipped."""
    folder = RunLayout(run_dir).metrics_dir
    found: dict[str, dict[int, dict[str, Any]]] = {split: {} for split in SPLITS}
    paths = sorted(folder.iterdir()) if folder.is_dir() else []
    for path in paths:
        parsed = parse_metrics_name(path.name)
        if parsed is None:
            continue
        split, epoch = parsed
        found[split][epoch] = _checked(path, read_json(path), split, epoch)
    return {split: dict(sorted(by_epoch.items())) for split, by_epoch in found.items()}


def read_best(run_dir: str | Path, *, missing_ok: bool = True) -> Best | None:
    """RUN/best.json, checked (epoch, val_mean_accuracy); None when absent and missing_ok."""
    path = RunLayout(run_dir).best
    if missing_ok and not path.is_file():
        return None
    data = read_json(path)
    try:
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object")
        for key in ("epoch", "val_mean_accuracy"):
            if key not in data:
                raise ValueError(f"missing field {key!r}")
        check_epoch(data["epoch"])
        _fraction("val_mean_accuracy", data["val_mean_accuracy"])
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return data


def write_best(run_dir: str | Path, best: Best) -> Path:
    """Write RUN/best.json atomically (after RUN/model.pt, so best.json never names a missing model)."""
    path = RunLayout(run_dir).best
    try:
        check_epoch(best.get("epoch"))
        _fraction("val_mean_accuracy", best.get("val_mean_accuracy"))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return write_json(path, dict(best))


def _checked(path: Path, data: Any, split: str, epoch: int) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    if data.get("epoch") != epoch:
        raise ValueError(f"{path}: field 'epoch' is {data.get('epoch')!r}, but the file name says {epoch}")
    if data.get("split", split) != split:
        raise ValueError(f"{path}: field 'split' is {data['split']!r}, but the file name says {split!r}")
    return data


def _fraction(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}: expected a number in [0, 1], got {value!r}")
    return float(value)
