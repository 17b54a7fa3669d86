"""Export the best epoch of a run: `select_best` applies faceattr.run.selection's rule to the
validation metrics the engine wrote and turns the chosen checkpoint into RUN/model.pt.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from faceattr.attributes import ATTRIBUTES
from faceattr.checkpoint import load_checkpoint
from faceattr.engine.metrics import get_accuracy, tune_thresholds
from faceattr.model import clean_state_dict, export_model
from faceattr.run import metrics
from faceattr.run.config import RunConfig
from faceattr.run.layout import RunLayout
from faceattr.run.selection import best_epoch, ranking_measure, ranking_score

log = logging.getLogger(__name__)


def select_best(run_dir: str | Path) -> dict:
    """Pick the best trained epoch (see the module's rule) and export it.

    Every trained epoch must have its val metrics. Writes RUN/model.pt (the inference artifact,
    thresholds tuned on validation when config.tune_thresholds, else 0) and then RUN/best.json.
    """
    layout = RunLayout(run_dir)
    config = RunConfig.load(run_dir)
    trained = layout.trained_epochs()
    if not trained:
        raise FileNotFoundError(f"{layout.checkpoints}: no epoch_K.pt checkpoints; train first")
    unscored = [k for k in trained if not layout.metrics("val", k).is_file()]
    if unscored:
        raise FileNotFoundError(
            f"{layout.metrics_dir}: no validation metrics for epoch(s) {', '.join(map(str, unscored))}; "
            f"run 'faceattr evaluate --run {run_dir} --epoch K --split val' for each"
        )
    val_by_epoch: dict[int, float] = {}
    ranked: dict[int, float] = {}
    for k in trained:
        path = layout.metrics("val", k)
        val = metrics.read_epoch_metrics(run_dir, "val", k)
        if "mean_accuracy" not in val:
            raise ValueError(f"{path}: not the validation metrics of epoch {k} (no mean_accuracy)")
        val_by_epoch[k] = float(val["mean_accuracy"])
        ranked[k] = ranking_score(val, config, str(path))
    best = best_epoch(ranked)

    if config.tune_thresholds:
        npz = metrics.scores_path(run_dir, "val", best)
        if not npz.is_file():
            raise FileNotFoundError(f"{npz}: no validation scores to tune thresholds; re-run evaluate for epoch {best}")
        with np.load(npz) as saved:
            thresholds = tune_thresholds(saved["scores"], saved["labels"])
            tuned_accuracy = get_accuracy(saved["scores"], saved["labels"], thresholds)[1]
    else:
        thresholds = np.zeros(len(ATTRIBUTES), dtype=np.float32)

    checkpoint_path = layout.checkpoint(best)
    checkpoint = load_checkpoint(checkpoint_path)
    state = clean_state_dict(checkpoint.get("model"), checkpoint_path)
    export_model(layout.model, state, config, epoch=best, thresholds=thresholds, run=str(layout.root.resolve()),
                 val_mean_accuracy=val_by_epoch[best])
    chosen: metrics.Best = {
        "epoch": best,
        "val_mean_accuracy": val_by_epoch[best],
        "val_by_epoch": {str(k): v for k, v in val_by_epoch.items()},
    }
    if config.tune_thresholds:
        # Measured on the data the thresholds were tuned on: optimistic, for information only.
        chosen["val_mean_accuracy_tuned"] = float(tuned_accuracy)
    metrics.write_best(run_dir, chosen)
    log.info("best epoch %d: val %s %.4f", best, ranking_measure(config), ranked[best])
    return {**chosen, "model": str(layout.model), "thresholds_tuned": config.tune_thresholds}
