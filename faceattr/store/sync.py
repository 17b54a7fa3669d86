"""Run folder -> store rows: what a run folder's JSON files say, as checked rows of the store's tables.

Reads the folder only through faceattr.run.metrics (the one reader of RUN/metrics/ and best.json);
Store.sync_run_dir writes the rows in one transaction. Any bad file is refused with its path, so a
sync never records half of a folder.
"""
from __future__ import annotations

from dataclasses import dataclass, field as dataclass_field
from pathlib import Path
from typing import Any

from faceattr.run.layout import RunLayout
from faceattr.run.metrics import all_epoch_metrics, read_best
from faceattr.store import values as v


@dataclass
class RunRows:
    """Rows for the epochs, attribute_metrics and models tables (model: None before selection)."""

    epochs: dict[int, dict[str, Any]] = dataclass_field(default_factory=dict)
    attribute_metrics: list[dict[str, Any]] = dataclass_field(default_factory=list)
    model: dict[str, Any] | None = None


def read_run_dir(run_id: str, run_dir: str | Path) -> RunRows:
    """The rows a run folder holds: per-epoch figures, per-attribute metrics and the selected model."""
    layout = RunLayout(run_dir)
    rows = RunRows()
    for split, by_epoch in all_epoch_metrics(layout.root).items():
        for epoch, data in by_epoch.items():
            figures = rows.epochs.setdefault(epoch, {"run_id": run_id, "epoch": epoch})
            try:
                rows.attribute_metrics += _epoch_figures(run_id, split, epoch, data, figures)
            except (KeyError, ValueError) as exc:
                raise ValueError(f"{layout.metrics(split, epoch)}: {exc.args[0]}") from None
    rows.epochs = dict(sorted(rows.epochs.items()))
    rows.model = _model(layout, rows.epochs)
    return rows


def _epoch_figures(run_id: str, split: str, epoch: int, data: dict[str, Any],
                   figures: dict[str, Any]) -> list[dict[str, Any]]:
    """Fill this epoch's row of the epochs table from one metrics file; return its attribute rows."""
    if split == "train" and "loss" in data:  # written by train_epoch
        figures.update(
            train_loss=v.number("loss", v.field(data, "loss")),
            train_accuracy=v.fraction("accuracy", v.field(data, "accuracy")),
            train_images=v.count("images", v.field(data, "images")),
            seconds=v.nonnegative("seconds", v.field(data, "seconds")),
            # The loop's steady rate (the pass's own includes torch.compile's first step); files
            # written before it was recorded, or of a one-step epoch, have only the pass's.
            images_per_second=v.nonnegative("images_per_second", data.get("loop_images_per_second")
                                            or v.field(data, "images_per_second")),
        )
    if split == "val":
        figures["val_mean_accuracy"] = v.fraction("mean_accuracy", v.field(data, "mean_accuracy"))
        if data.get("majority_baseline") is not None:
            figures["val_majority_baseline"] = v.fraction("majority_baseline", data["majority_baseline"])
    if split == "test":
        figures["test_mean_accuracy"] = v.fraction("mean_accuracy", v.field(data, "mean_accuracy"))
    if split != "train" or "attributes" in data:  # an evaluation file
        return v.attribute_rows(run_id, epoch, split, v.field(data, "attributes"), where="")
    return []


def _model(layout: RunLayout, epochs: dict[int, dict[str, Any]]) -> dict[str, Any] | None:
    """The selected model from RUN/best.json, with the test accuracy of its epoch when measured."""
    best = read_best(layout.root)
    if best is None:
        return None
    epoch = best["epoch"]
    model = {"epoch": epoch, "path": str(layout.model.resolve()), "val_mean_accuracy": best["val_mean_accuracy"]}
    test = epochs.get(epoch, {}).get("test_mean_accuracy")
    if test is not None:
        model["test_mean_accuracy"] = test
    return model
