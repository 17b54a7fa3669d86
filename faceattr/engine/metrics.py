"""The evaluation metrics, plain numpy: accuracy per attribute, balanced accuracy, F1, the
majority-class baseline, the metrics JSON body and threshold tuning.

The write-up's rule: a score >= threshold (0, halfway between the labels -1 and 1) predicts 1,
otherwise -1; accuracy is the fraction of correct predictions per attribute, and the mean
accuracy averages the 40 attributes. Beside it we report balanced accuracy and F1 per
attribute, and the majority-class baseline (always predict the attribute's most common value
in the train split), because many attributes are rare and 90% accuracy can mean nothing.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from faceattr.attributes import ATTRIBUTES


def get_accuracy(scores, labels, thresholds=0.0) -> tuple[np.ndarray, float]:
    """Per-attribute accuracy (ndarray of K) and their mean, predicting 1 where score >= threshold.

    `scores`: N x K floats; `labels`: N x K of -1/1; `thresholds`: a number or K numbers.
    """
    scores, labels, thresholds = _check_inputs(scores, labels, thresholds)
    predictions = np.where(scores >= thresholds, 1, -1)
    per_attribute = (predictions == labels).mean(axis=0)
    return per_attribute, float(per_attribute.mean())


def majority_classes(train_labels) -> np.ndarray:
    """Each attribute's most common value (-1 or 1) in `train_labels` (N x K); a tie gives 1."""
    train_labels = np.asarray(train_labels)
    if train_labels.ndim != 2 or len(train_labels) == 0:
        raise ValueError(f"train labels: expected a non-empty N x K array, got shape {train_labels.shape}")
    return np.where((train_labels == 1).mean(axis=0) >= 0.5, 1, -1).astype(np.int8)


def attribute_metrics(scores, labels, thresholds=0.0, majority=None) -> dict[str, np.ndarray]:
    """Per-attribute accuracy, balanced accuracy, F1 (of class 1) and majority baseline, each K values.

    Balanced accuracy is the mean of the recalls of the classes present (as sklearn's
    balanced_accuracy_score); F1 is 0 when there is no positive label and no positive
    prediction. `majority` (K values of -1/1, from the train split) gives the baseline.
    """
    scores, labels, thresholds = _check_inputs(scores, labels, thresholds)
    predicted_pos = scores >= thresholds
    actual_pos = labels == 1
    tp = (predicted_pos & actual_pos).sum(axis=0)
    fp = (predicted_pos & ~actual_pos).sum(axis=0)
    fn = (~predicted_pos & actual_pos).sum(axis=0)
    tn = (~predicted_pos & ~actual_pos).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall_pos = np.where(tp + fn > 0, tp / (tp + fn), np.nan)
        recall_neg = np.where(tn + fp > 0, tn / (tn + fp), np.nan)
        balanced = np.nanmean(np.stack([recall_pos, recall_neg]), axis=0)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
    metrics = {"accuracy": (tp + tn) / len(labels), "balanced_accuracy": balanced, "f1": f1}
    if majority is not None:
        majority = np.asarray(majority)
        if majority.shape != (labels.shape[1],):
            raise ValueError(f"majority: expected {labels.shape[1]} values, got shape {majority.shape}")
        metrics["majority_baseline"] = (labels == majority).mean(axis=0)
    return metrics


def summarise(scores, labels, thresholds, majority, names=ATTRIBUTES) -> dict[str, Any]:
    """The metrics JSON body: means over attributes plus one entry per attribute."""
    thresholds = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (len(names),))
    metrics = attribute_metrics(scores, labels, thresholds, majority)
    return {
        "images": int(len(labels)),
        "mean_accuracy": float(metrics["accuracy"].mean()),
        "majority_baseline": float(metrics["majority_baseline"].mean()),
        "mean_balanced_accuracy": float(metrics["balanced_accuracy"].mean()),
        "mean_f1": float(metrics["f1"].mean()),
        "attributes": {
            name: {
                "accuracy": float(metrics["accuracy"][i]),
                "balanced_accuracy": float(metrics["balanced_accuracy"][i]),
                "f1": float(metrics["f1"][i]),
                "majority_baseline": float(metrics["majority_baseline"][i]),
                "threshold": float(thresholds[i]),
            }
            for i, name in enumerate(names)
        },
    }


def mean_loss(scores, labels, kind: str = "mse") -> float | None:
    """The training loss (`kind` mse or bce, without pos_weight) of scores on -1/1 labels: what a
    validation pass would have cost in training. None when a score is not finite."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    if not np.isfinite(scores).all():
        return None
    if kind == "bce":  # on logits, targets 0/1
        return float(np.mean(np.logaddexp(0.0, scores) - scores * (labels > 0)))
    return float(np.mean((scores - labels) ** 2))


def tune_thresholds(scores, labels) -> np.ndarray:
    """Per-attribute thresholds (float32, K) that maximise accuracy on (scores, labels).

    Sorting each column, a cut after the c lowest scores predicts -1 below and 1 above, and its
    accuracy follows from cumulative counts, so all N+1 cuts are scored at once. Among equally
    good cuts the threshold nearest 0 wins (0 itself when it is one of them), so tuning keeps
    the write-up's default unless it is beaten; otherwise it sits midway between two scores.
    """
    scores, labels, _ = _check_inputs(scores, labels, 0.0)
    scores = scores.astype(np.float32)
    n, k = scores.shape
    order = np.argsort(scores, axis=0, kind="stable")
    ranked = np.take_along_axis(scores, order, axis=0)
    ranked_labels = np.take_along_axis(labels, order, axis=0)

    zeros = np.zeros((1, k), dtype=np.int64)
    neg_below = np.vstack([zeros, np.cumsum(ranked_labels == -1, axis=0)])  # (n+1, k)
    pos_below = np.vstack([zeros, np.cumsum(ranked_labels == 1, axis=0)])
    correct = neg_below + (pos_below[-1] - pos_below)

    # Cut c predicts 1 for thresholds t in (lo, hi] = (ranked[c-1], ranked[c]].
    inf = np.full((1, k), np.inf, dtype=np.float32)
    lo = np.vstack([-inf, ranked])
    hi = np.vstack([ranked, inf])
    possible = lo < hi  # no cut between equal scores
    with np.errstate(invalid="ignore", over="ignore"):
        mid = lo + (hi - lo) / 2
    mid[0] = np.minimum(hi[0], 0.0)
    mid[-1] = np.maximum(np.nextafter(lo[-1], np.float32(np.inf)), 0.0)
    mid = np.where(mid > lo, mid, hi)  # float rounding must not land on the lower score
    candidates = np.where((lo < 0) & (0 <= hi), np.float32(0.0), mid)

    correct = np.where(possible, correct, -1)
    best = correct == correct.max(axis=0)
    distance = np.where(best, np.abs(candidates), np.inf)
    chosen = distance.argmin(axis=0)
    return candidates[chosen, np.arange(k)].astype(np.float32)


def _check_inputs(scores, labels, thresholds):
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    if not np.issubdtype(scores.dtype, np.number):
        raise ValueError(f"scores: expected numbers, got dtype {scores.dtype}")
    if scores.ndim != 2 or scores.shape[0] == 0:
        raise ValueError(f"scores: expected a non-empty N x K array, got shape {scores.shape}")
    if labels.shape != scores.shape:
        raise ValueError(f"labels: shape {labels.shape} does not match scores {scores.shape}")
    if not np.isin(labels, (-1, 1)).all():
        raise ValueError("labels: values must be -1 or 1")
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.ndim > 1 or (thresholds.ndim == 1 and thresholds.shape[0] != scores.shape[1]):
        raise ValueError(f"thresholds: expected a number or {scores.shape[1]} values, got shape {thresholds.shape}")
    return scores, labels, thresholds
