"""The whole recipe in one process: split, train and validate each epoch, select, test, report.

`faceattr fit` runs it; the Airflow DAG runs the same library calls as separate tasks. It is
resumable: a split that exists is kept, and epochs with both a checkpoint and validation
metrics are not redone.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

from faceattr.data.split import make_split
from faceattr.engine import selection
from faceattr.engine.distributed import launch_epoch
from faceattr.engine.evaluate import evaluate_epoch
from faceattr.model import build_model
from faceattr.run import metrics
from faceattr.run.config import ConfigError, RunConfig, check_continues, check_device
from faceattr.run.layout import RunLayout
from faceattr.run.lock import run_lock
from faceattr.run.report import write_report
from faceattr.run.selection import ranking_score, stop_reason

log = logging.getLogger(__name__)


def fit(config: RunConfig, run_dir: str | Path) -> dict:
    """Run the recipe for `config` in `run_dir`; returns a summary of the best epoch and the test result.

    Validation after every epoch; with config.patience > 0, training stops once that many epochs
    in a row have not improved the best validation figure (faceattr.run.selection's rule, the
    one that then picks the best epoch). Each epoch is spread over the visible GPUs as the DAG's
    train task does (faceattr.engine.distributed.launch_epoch).
    """
    check_runnable(config)  # before the folder is made
    with run_lock(run_dir, "faceattr fit", create=True):  # one process at a time in the folder
        return _fit(config, Path(run_dir))


def check_runnable(config: RunConfig) -> None:
    """Refuse, before anything is written, a config that cannot train here: an unknown arch, a
    weights file that is missing or not a state dict that fits, more frozen children than the model
    has, a device this machine lacks. Builds the model with random weights (no download)."""
    check_device(config.device)
    weights = "none" if config.weights == "imagenet" else config.weights
    try:
        build_model(config.arch, weights, config.freeze_children)
    except (ValueError, OSError) as exc:
        raise ConfigError(str(exc).splitlines()[0] if str(exc) else repr(exc)) from None


def _fit(config: RunConfig, run_dir: Path) -> dict:
    start = time.perf_counter()
    layout = RunLayout(run_dir)
    check_continues(config, run_dir)  # a different learning config for a started run is an error

    # The split's strategy and seed are part of the saved config checked above, so an existing
    # split.csv was made with the same ones. config.json is written only beside a split made with it.
    if layout.split.is_file():
        log.info("split: keeping %s", layout.split)
    else:
        split = make_split(Path(config.root), config.split, config.seed, run_dir)
        log.info("split (%s, seed %d): %s", config.split, config.seed,
                 ", ".join(f"{name} {split[name]}" for name in ("train", "val", "test")))
    config.save(run_dir)  # checked above: it may continue the run

    val_by_epoch: dict[int, float] = {}
    ranked: dict[int, float] = {}  # the figure selection ranks epochs by
    stopped_early = False
    for epoch in range(1, config.epochs + 1):
        val = metrics.read_epoch_metrics(run_dir, "val", epoch, missing_ok=True)
        if layout.checkpoint(epoch).is_file() and val is not None:
            log.info("epoch %d: already trained and validated", epoch)
        else:
            if not layout.checkpoint(epoch).is_file():
                launch_epoch(run_dir, epoch, config)
            val = evaluate_epoch(run_dir, epoch, "val", device=config.device)
        val_by_epoch[epoch] = float(val["mean_accuracy"])
        ranked[epoch] = ranking_score(val, config, str(layout.metrics("val", epoch)))
        log.info("epoch %d: val mean accuracy %.4f (majority baseline %.4f)",
                 epoch, val_by_epoch[epoch], float(val.get("majority_baseline", math.nan)))
        reason = stop_reason(config, ranked)
        if reason:
            stopped_early = epoch < config.epochs
            if stopped_early:
                log.info("early stop after epoch %d: %s", epoch, reason)
            break

    best = selection.select_best(run_dir)
    best_epoch = int(best["epoch"])
    test = evaluate_epoch(run_dir, "best", "test", device=config.device)
    report = write_report(run_dir)
    summary = {
        "run": str(run_dir),
        "epochs_run": sorted(val_by_epoch),
        "stopped_early": stopped_early,
        "val_by_epoch": val_by_epoch,
        "best_epoch": best_epoch,
        "val_mean_accuracy": float(best["val_mean_accuracy"]),
        "test_mean_accuracy": float(test["mean_accuracy"]),
        "test_majority_baseline": float(test["majority_baseline"]),
        "test_images": int(test["images"]),
        "paths": {
            "config": str(layout.config),
            "split": str(layout.split),
            "checkpoints": str(layout.checkpoints),
            "best": str(layout.best),
            "model": str(layout.model),
            "test_metrics": str(layout.metrics("test", best_epoch)),
            "report": str(report),
        },
        "seconds": round(time.perf_counter() - start, 1),
    }
    log.info(
        "fit: best epoch %d, val %.4f, test %.4f (majority baseline %.4f) in %.0f s",
        best_epoch, summary["val_mean_accuracy"], summary["test_mean_accuracy"],
        summary["test_majority_baseline"], summary["seconds"],
    )
    return summary
