"""The evaluation stage: score epoch K's checkpoint (or the selected model) on a split and write
its metrics into the run folder.

The metrics themselves are faceattr.engine.metrics; running the model on batches is
faceattr.engine.inference (shared with scoring); choosing the best epoch is
faceattr.run.selection's rule.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from faceattr.attributes import ATTRIBUTES
from faceattr.checkpoint import load_checkpoint
from faceattr.data.loaders import load_split_frame, make_loader
from faceattr.engine.inference import score_loader
from faceattr.engine.metrics import get_accuracy, majority_classes, mean_loss, summarise, tune_thresholds
from faceattr.fsutil import atomic_path
from faceattr.model import build_model, check_run_model, clean_state_dict, load_model_file
from faceattr.run import metrics as run_metrics
from faceattr.run.config import RunConfig
from faceattr.run.layout import RunLayout
from faceattr.runtime import resolve_device

log = logging.getLogger(__name__)

# Evaluated splits; RUN/metrics/train_epoch_K.json holds the training figures written by train.
SPLITS = ("val", "test")


def evaluate_epoch(run_dir: str | Path, epoch: int | str, split: str, device: str | None = None) -> dict:
    """Score epoch K's checkpoint (or, for "best", RUN/model.pt with its thresholds) on a split.

    Writes RUN/metrics/{split}_epoch_K.json; for "val" with config.tune_thresholds it also keeps
    the raw scores in RUN/metrics/val_epoch_K.npz for faceattr.engine.selection to tune thresholds
    on. "best" is meant for the test split: on "val" it rewrites the chosen epoch's val metrics
    with the tuned thresholds.
    """
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
