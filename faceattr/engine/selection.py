"""Which epoch is best and when to stop: the one home of both rules, used by `faceattr fit`, the
DAG's train/select tasks and the run store.

The rule: epochs are ranked by one validation figure, `ranking_measure(config)`: the mean
accuracy after tuning thresholds on validation (`mean_accuracy_tuned`) when config.tune_thresholds
is on, since the exported model is then used with tuned thresholds; else `mean_accuracy`. Higher
wins; a tie goes to the earlier epoch. Early stopping counts the validated epochs, at the end,
that did not beat the best before them, by the same figure.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from faceattr.attributes import ATTRIBUTES
from faceattr.config import RunConfig
from faceattr.run import metrics
from faceattr.run.layout import RunLayout

log = logging.getLogger(__name__)


def ranking_measure(config: RunConfig) -> str:
    """The val metrics field that ranks epochs for `config`."""
    return "mean_accuracy_tuned" if config.tune_thresholds else "mean_accuracy"


def rule_text(config: RunConfig) -> str:
    """The rule in words, as the select task's log and the Run page show it."""
    return (f"highest validation {ranking_measure(config).replace('_', ' ')}; a tie goes to the earlier epoch"
            + (f"; stop after {config.patience} epoch(s) without a gain" if config.patience else ""))


def ranking_score(val: Mapping[str, Any], config: RunConfig, where: str = "val metrics") -> float:
    """An epoch's ranking figure from its val metrics; a clear error when it was scored without it."""
    key = ranking_measure(config)
    if key not in val:
        raise ValueError(f"{where}: no {key} (scored before tune_thresholds was set?); re-run "
                         f"'faceattr evaluate --epoch {val.get('epoch', 'K')} --split val' for it")
    return float(val[key])


def validation_scores(run_dir: str | Path, config: RunConfig, epochs: Iterable[int]) -> dict[int, float]:
    """The ranking figure of each of `epochs` that has val metrics (the others are left out)."""
    found = {}
    for epoch in epochs:
        val = metrics.read_epoch_metrics(run_dir, "val", epoch, missing_ok=True)
        if val is not None:
            found[epoch] = ranking_score(val, config, str(RunLayout(run_dir).metrics("val", epoch)))
    return found


def best_epoch(scores: Mapping[int, float]) -> int:
    """The epoch with the highest score; ties go to the earlier epoch."""
    if not scores:
        raise ValueError("best epoch: no validated epochs to choose from")
    return max(scores, key=lambda k: (scores[k], -k))


def epochs_without_improvement(scores: Mapping[int, float]) -> int:
    """Validated epochs in a row, at the end, that did not beat the best before them (a tie is no gain)."""
    best, stale = -np.inf, 0
    for epoch in sorted(scores):
        if scores[epoch] > best:
            best, stale = scores[epoch], 0
        else:
            stale += 1
    return stale


def stop_reason(config: RunConfig, scores: Mapping[int, float]) -> str | None:
    """Why training should stop after the epochs in `scores` (config.patience), or None."""
    stale = epochs_without_improvement(scores)
    if not config.patience or stale < config.patience:
        return None
    best = best_epoch(scores)
    return (f"{stale} validated epoch(s) without beating epoch {best}'s {ranking_measure(config)} "
            f"{scores[best]:.4f} (patience {config.patience})")


def select_best(run_dir: str | Path) -> dict:
    """Pick the best trained epoch (see the module's rule) and export it.

    Every trained epoch must have its val metrics. Writes RUN/model.pt (the inference artifact,
    thresholds tuned on validation when config.tune_thresholds, else 0) and then RUN/best.json.
    """
    from faceattr.checkpoint import load_checkpoint
    from faceattr.engine.evaluate import get_accuracy, tune_thresholds
    from faceattr.model import clean_state_dict, export_model

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
