"""Scoring checkpoints: metrics per attribute, threshold tuning, evaluating an epoch on a split.

The write-up's rule: a score >= threshold (0, halfway between the labels -1 and 1) predicts 1,
otherwise -1; accuracy is the fraction of correct predictions per attribute, and the mean
accuracy averages the 40 attributes. Beside it we report balanced accuracy and F1 per
attribute, and the majority-class baseline (always predict the attribute's most common value
in the train split), because many attributes are rare and 90% accuracy can mean nothing.
Choosing the best epoch is faceattr.run.selection's rule.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from faceattr.run.config import RunConfig
from faceattr.attributes import ATTRIBUTES
from faceattr.fsutil import atomic_path
from faceattr.run import metrics as run_metrics
from faceattr.run.layout import RunLayout

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# Evaluated splits; RUN/metrics/train_epoch_K.json holds the training figures written by train.
SPLITS = ("val", "test")


# -- metrics (plain numpy) --------------------------------------------------------------------
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


# -- scoring with a model ---------------------------------------------------------------------
def prepare_for_inference(model: "torch.nn.Module", device: "torch.device") -> "torch.nn.Module":
    """Eval mode on `device`; channels_last and cuDNN autotuning on CUDA, where convolutions run faster so."""
    import torch

    from faceattr.runtime import prepare_cuda

    prepare_cuda(device)
    model = model.to(device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def score_batch(model: "torch.nn.Module", images: "torch.Tensor", device: "torch.device") -> "torch.Tensor":
    """Raw float32 scores (on CPU) of one batch; call inside torch.inference_mode()."""
    import torch

    from faceattr.runtime import autocast

    if device.type == "cuda":
        images = images.to(device, non_blocking=True, memory_format=torch.channels_last)
    else:
        images = images.to(device)
    with autocast(device):
        return model(images).float().cpu()


def score_loader(model: "torch.nn.Module", loader, device: "torch.device") -> tuple[np.ndarray, np.ndarray]:
    """Scores (N x K float32) and labels (N x K int8) of every (images, labels) batch of `loader`."""
    import torch

    model = prepare_for_inference(model, device)
    all_scores, all_labels = [], []
    with torch.inference_mode():
        for images, labels in loader:
            all_scores.append(score_batch(model, images, device).numpy())
            all_labels.append(labels.numpy().astype(np.int8))
    if not all_scores:
        raise ValueError("score_loader: the loader yielded no batches")
    return np.concatenate(all_scores), np.concatenate(all_labels)


# -- run-folder step ---------------------------------------------------------------------------
def evaluate_epoch(run_dir: str | Path, epoch: int | str, split: str, device: str | None = None) -> dict:
    """Score epoch K's checkpoint (or, for "best", RUN/model.pt with its thresholds) on a split.

    Writes RUN/metrics/{split}_epoch_K.json; for "val" with config.tune_thresholds it also keeps
    the raw scores in RUN/metrics/val_epoch_K.npz for faceattr.engine.selection to tune thresholds
    on. "best" is meant for the test split: on "val" it rewrites the chosen epoch's val metrics
    with the tuned thresholds.
    """
    from faceattr.checkpoint import load_checkpoint
    from faceattr.data.loaders import load_split_frame, make_loader
    from faceattr.model import build_model, check_run_model, clean_state_dict, load_model_file
    from faceattr.runtime import resolve_device

    if split not in SPLITS:
        raise ValueError(f"split: {split!r} is not one of {', '.join(SPLITS)}")
    layout = RunLayout(run_dir)
    config = RunConfig.load(run_dir)
    device = resolve_device(device if device is not None else config.device)

    if epoch == "best":
        if not layout.best.is_file():
            raise FileNotFoundError(f"{layout.best}: no best epoch chosen yet; run 'faceattr select --run {run_dir}'")
        best = run_metrics.read_best(run_dir)
        model, info = load_model_file(layout.model)
        check_run_model(info, layout.model, run_dir, arch=config.arch, epoch=best["epoch"])  # not another's
        epoch = int(info["epoch"])
        thresholds = info["thresholds"].numpy().astype(np.float64)
    else:
        epoch = _epoch_number(epoch)
        path = layout.checkpoint(epoch)
        checkpoint = load_checkpoint(path)
        if "model" not in checkpoint:
            raise ValueError(f"{path}: not a training checkpoint (no 'model' entry)")
        if checkpoint.get("epoch", epoch) != epoch:
            raise ValueError(f"{path}: holds epoch {checkpoint['epoch']}, expected {epoch}")
        arch = checkpoint.get("config", {}).get("arch", config.arch)
        model = build_model(arch, weights="none", freeze_children=0, num_outputs=len(ATTRIBUTES))
        try:
            model.load_state_dict(clean_state_dict(checkpoint["model"], path))
        except RuntimeError as exc:
            raise ValueError(f"{path}: model state does not fit {arch}: {' '.join(str(exc).split())[:400]}") from None
        thresholds = np.zeros(len(ATTRIBUTES))

    frame = load_split_frame(run_dir, root=config.root)
    loader = make_loader(run_dir, config, split, train=False, device=device, frame=frame)
    start = time.perf_counter()
    scores, labels = score_loader(model, loader, device)
    seconds = time.perf_counter() - start
    if not np.isfinite(scores).all():
        log.warning("epoch %d %s: %d non-finite scores (diverged model?); counted as -1", epoch, split,
                    int((~np.isfinite(scores)).sum()))

    train_labels = frame.loc[frame["split"] == "train", list(ATTRIBUTES)].to_numpy()
    result = {
        "epoch": epoch,
        "split": split,
        **summarise(scores, labels, thresholds, majority_classes(train_labels)),
        "seconds": round(seconds, 3),
        "images_per_second": round(len(scores) / seconds, 2) if seconds > 0 else None,
        "loss": mean_loss(scores, labels, config.loss),  # beside the train loss on the Run page's chart
    }
    if split == "val" and config.tune_thresholds:
        # What this epoch would score on validation once selection tunes its thresholds there.
        result["mean_accuracy_tuned"] = float(get_accuracy(scores, labels, tune_thresholds(scores, labels))[1])
    if split == "test" or (split == "val" and config.tune_thresholds):
        # val: selection tunes thresholds on them; test: the UI's accuracy per subgroup (faceattr.ui).
        with atomic_path(run_metrics.scores_path(run_dir, split, epoch)) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, scores=scores, labels=labels, thresholds=thresholds)
    run_metrics.write_epoch_metrics(run_dir, split, epoch, result)
    log.info("epoch %d %s: mean accuracy %.4f (majority baseline %.4f) on %d images",
             epoch, split, result["mean_accuracy"], result["majority_baseline"], result["images"])
    return result


def _epoch_number(epoch: Any) -> int:
    try:
        number = int(epoch)
    except (TypeError, ValueError):
        raise ValueError(f"epoch: {epoch!r} is not an epoch number or 'best'") from None
    if number < 1:
        raise ValueError(f"epoch: {number} must be 1 or more")
    return number
