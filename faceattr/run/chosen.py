"""Which of a run's models and epochs is "the run's": one home for the fallback the store, the
registry and the UI share, on top of faceattr.run.selection's best-epoch rule.

    selected_model   the run's model among its model rows: RUN/best.json's epoch when the folder is
                     readable here; else the newest published row; else the highest epoch
    ranked_epochs    each validated epoch's ranking figure (mean accuracy, or the tuned figure the
                     config ranks by, read from the run folder when it is readable here)
    best_so_far      the selected model, else the best validated epoch so far, with its figures
"""
from __future__ import annotations

import os
from datetime import datetime, timezone
from typing import Any

from faceattr.run.config import ConfigError, RunConfig
from faceattr.run.metrics import read_best
from faceattr.run.selection import best_epoch, ranking_measure, validation_scores


def selected_model(run_dir: str | os.PathLike | None, models: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The run's model among its model rows (each with "epoch", and "state", "state_at" once published)."""
    if not models:
        return None
    try:
        best = read_best(run_dir) if run_dir else None
    except (OSError, ValueError):
        best = None
    chosen = next((m for m in models if best is not None and m["epoch"] == best["epoch"]), None)
    never = datetime.min.replace(tzinfo=timezone.utc)
    return chosen or max(models, key=lambda m: (m.get("state") is not None, m.get("state_at") or never, m["epoch"]))


def ranked_epochs(run_dir: str | os.PathLike | None, config: RunConfig | None,
                  validated: dict[int, float]) -> dict[int, float]:
    """{epoch: the figure selection ranks it by}; the given mean accuracies when the config ranks by
    them, or when the run folder's tuned figures are not readable here."""
    if config is None or run_dir is None or ranking_measure(config) == "mean_accuracy":
        return dict(validated)
    try:
        return validation_scores(run_dir, config, sorted(validated)) or dict(validated)
    except (OSError, ValueError):
        return dict(validated)


def best_so_far(run: dict[str, Any], models: list[dict[str, Any]], epochs: list[dict[str, Any]]) -> dict[str, Any]:
    """{"best_epoch", "val_mean_accuracy", "test_mean_accuracy", "model"} of a run row (with "id",
    "run_dir", "config"): the selected model, else (a run in progress) its best validated epoch."""
    selected = model = selected_model(run["run_dir"], models)
    if model is None:
        validated = {e["epoch"]: e for e in epochs if e["val_mean_accuracy"] is not None}
        if not validated:
            return {"best_epoch": None, "val_mean_accuracy": None, "test_mean_accuracy": None, "model": None}
        try:
            config = RunConfig.from_dict(run.get("config") or {}, source=f"run {run['id']} config")
        except ConfigError:
            config = None  # not readable here: rank by the stored mean accuracy
        scores = ranked_epochs(run["run_dir"], config, {k: e["val_mean_accuracy"] for k, e in validated.items()})
        model = validated[best_epoch(scores)]
    test = model.get("test_mean_accuracy")
    if test is None:
        test = next((e["test_mean_accuracy"] for e in epochs if e["epoch"] == model["epoch"]), None)
    return {"best_epoch": model["epoch"], "val_mean_accuracy": model["val_mean_accuracy"], "test_mean_accuracy": test,
            "model": selected}
