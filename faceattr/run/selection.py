"""Which epoch is best and when to stop: the run's own rule, used by `faceattr fit`, the DAG's
train/select tasks, the run store and the UI.

The rule: epochs are ranked by one validation figure, `ranking_measure(config)`: the mean
accuracy after tuning thresholds on validation (`mean_accuracy_tuned`) when config.tune_thresholds
is on, since the exported model is then used with tuned thresholds; else `mean_accuracy`. Higher
wins; a tie goes to the earlier epoch. Early stopping counts the validated epochs, at the end,
that did not beat the best before them, by the same figure.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping

from faceattr.run import metrics
from faceattr.run.config import RunConfig
from faceattr.run.layout import RunLayout


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
    best, stale = -math.inf, 0
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
