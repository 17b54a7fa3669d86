"""Training: one epoch at a time, each from the previous epoch's checkpoint.

`train_epoch(run, K, config)` is what `faceattr train --epoch K` and the Airflow task run: it
rebuilds the model, optimizer, schedule and RNG from RUN/checkpoints/epoch_{K-1}.pt, trains one
pass over the train split and writes epoch_K.pt plus RUN/metrics/train_epoch_K.json.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from faceattr import settings
from faceattr.checkpoint import load_checkpoint, save_checkpoint
from faceattr.data.loaders import make_loader
from faceattr.engine import parallel
from faceattr.engine.parallel import Rank
from faceattr.model import model_from_config, trainable_parameters
from faceattr.progress import Progress
from faceattr.run.config import RunConfig
from faceattr.run.layout import RunLayout
from faceattr.run.metrics import write_epoch_metrics
from faceattr.runtime import (autocast, prepare_cuda, process_age_s, resolve_device, rng_state, seed_everything,
                              set_rng_state, should_compile, synchronize, use_compile_cache)

log = logging.getLogger(__name__)


# -- loss ---------------------------------------------------------------------------------------
class AttributeLoss(nn.Module):
    """The training loss on -1/+1 targets; an output >= 0 means "attribute present" for both kinds.

    "mse": the write-up's MSE between the raw outputs and the -1/+1 labels.
    "bce": BCEWithLogits on {0, 1} targets.
    `pos_weight` (one factor per attribute) multiplies the loss of each positive label, so that a
    rare attribute's few positives are not drowned by its negatives.
    """

    def __init__(self, kind: str = "mse", pos_weight: torch.Tensor | None = None):
        super().__init__()
        if kind not in ("mse", "bce"):
            raise ValueError(f"loss: {kind!r} is not one of mse, bce")
        self.kind = kind
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        outputs = outputs.float()  # under bf16 autocast, compute the loss in fp32
        if self.kind == "bce":
            return nn.functional.binary_cross_entropy_with_logits(outputs, (targets + 1) / 2, pos_weight=self.pos_weight)
        if self.pos_weight is None:
            return nn.functional.mse_loss(outputs, targets)
        weights = torch.where(targets > 0, self.pos_weight, torch.ones_like(self.pos_weight))
        return (weights * (outputs - targets) ** 2).mean()


def positive_weights(labels: np.ndarray, mode: str = "full") -> torch.Tensor:
    """Per attribute, negatives / positives in an N x 40 array of -1/+1, or its square root for "sqrt".

    An attribute without positives is divided by 1, not 0.
    """
    if mode not in ("full", "sqrt"):
        raise ValueError(f"pos_weight: {mode!r} is not one of full, sqrt")
    labels = np.asarray(labels)
    positives = (labels == 1).sum(axis=0)
    negatives = (labels == -1).sum(axis=0)
    ratio = negatives / np.maximum(positives, 1)
    return torch.as_tensor(np.sqrt(ratio) if mode == "sqrt" else ratio, dtype=torch.float32)


def make_loss(config: RunConfig, train_labels: np.ndarray | None = None) -> AttributeLoss:
    """The loss `config` asks for; `train_labels` (N x 40, -1/+1) are needed for pos_weight."""
    weights = None
    if config.pos_weight != "none":
        if train_labels is None:
            raise ValueError("pos_weight: needs the train split's labels")
        weights = positive_weights(train_labels, config.pos_weight)
    return AttributeLoss(config.loss, weights)


# -- optimizer and schedule --------------------------------------------------------------------
def make_optimizer(model: nn.Module, config: RunConfig) -> torch.optim.Optimizer:
    """Adamax (the write-up's) or AdamW over the parameters that are not frozen."""
    params = trainable_parameters(model)
    if not params:
        raise ValueError(f"freeze_children={config.freeze_children} leaves no trainable parameters in {config.arch}")
    if config.optimizer == "adamax":
        return torch.optim.Adamax(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    raise ValueError(f"optimizer: {config.optimizer!r} is not one of adamax, adamw")


def make_scheduler(optimizer: torch.optim.Optimizer, config: RunConfig):
    """The learning-rate schedule over config.epochs, stepped once per epoch; None for "none"."""
    if config.schedule == "none":
        return None
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    if config.schedule == "step":
        # Divide the rate by 10 after each third of the run.
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, config.epochs // 3), gamma=0.1)
    raise ValueError(f"schedule: {config.schedule!r} is not one of none, cosine, step")


# -- one pass -----------------------------------------------------------------------------------
def train_one_epoch(
    model: nn.Module,
    loader,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    *,
    desc: str = "train",
    log_every_s: float = 10.0,
    channels_last: bool | None = None,
    rank: Rank = Rank.single(),
    loss_points: int = 50,
) -> dict:
    """One pass over `loader`: {"loss", "accuracy", "images", "seconds", "images_per_second",
    "warmup_s", "loop_s", "loop_images_per_second", "batches", "batch_losses"}.

    "batch_losses": about `loss_points` [batch number, mean loss of the batches since the last
    point] pairs, the curve within the epoch (one device sync per point).

    Loss and accuracy (outputs >= 0 vs the -1/+1 labels, averaged over all attributes) are summed
    on the device and read back only when progress is shown, so the GPU is not synced per batch.
    "seconds" and "images_per_second" cover the whole pass; the first step, where torch.compile
    compiles and CUDA warms up, is timed apart ("warmup_s": from the first batch's arrival, so the
    loader's start-up is not in it), and the steady rate is measured from there ("loop_*": after a
    device sync, up to a sync at the end; None with a single step).
    `rank`: under DDP only rank 0 shows progress, counting its images times the world size
    against the whole split (the ranks' shares differ by at most one image per batch).
    """
    if channels_last is None:
        channels_last = device.type == "cuda"
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.train()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct_sum = torch.zeros((), device=device, dtype=torch.float64)  # per-image accuracies, summed
    seen = 0
    progress = Progress(len(loader.dataset), desc, log_every_s=log_every_s, enabled=rank.is_main)

    def running() -> dict[str, float]:
        n = max(seen, 1)
        return {"loss": loss_sum.item() / n, "acc": correct_sum.item() / n}

    every = max(1, (len(loader) if hasattr(loader, "__len__") else 0) // max(1, loss_points))
    window_sum = torch.zeros((), device=device, dtype=torch.float64)
    window_images, batch_losses, batches = 0, [], 0
    start = time.perf_counter()
    first_at, loop_start, warmup_images = None, None, 0
    for images, targets in loader:
        if first_at is None:  # the first batch is here: the loader's start-up is behind us
            first_at = time.perf_counter()
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        targets = targets.to(device, non_blocking=True)
        with autocast(device):
            outputs = model(images)
        loss = loss_fn(outputs, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

        batch = targets.shape[0]
        seen += batch
        loss_sum += loss.detach().double() * batch
        window_sum += loss.detach().double() * batch
        window_images, batches = window_images + batch, batches + 1
        if batches % every == 0:
            batch_losses.append([batches, round(window_sum.item() / window_images, 6)])
            window_sum.zero_()
            window_images = 0
        correct_sum += ((outputs.detach() >= 0) == (targets > 0)).double().mean(dim=1).sum()
        if loop_start is None:  # the first step is done: the steady loop starts here
            synchronize(device)
            loop_start, warmup_images = time.perf_counter(), seen
        progress.update(batch * rank.world_size, running)
    progress.close()
    if seen == 0:
        raise ValueError("train: the loader yielded no images")
    synchronize(device)
    end = time.perf_counter()
    figures = running()
    seconds, loop_seconds, loop_images = end - start, end - loop_start, seen - warmup_images
    return {
        "loss": figures["loss"],
        "accuracy": figures["acc"],
        "images": seen,
        "seconds": seconds,
        "images_per_second": seen / seconds if seconds > 0 else 0.0,
        "warmup_s": loop_start - first_at,
        "loop_s": loop_seconds,
        "loop_images_per_second": loop_images / loop_seconds if loop_images and loop_seconds > 0 else None,
        "batches": batches,
        "batch_losses": batch_losses,
    }


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, loader, device: torch.device, max_images: int) -> int:
    """Recompute every BatchNorm layer's running mean and variance on up to `max_images` images.

    Training sees images zoomed by the augmentation (resize to 220x270, crop 178x218) while
    evaluation sees them unzoomed; running statistics gathered during training also trail the
    weights. Averaging the statistics afresh, with the final weights, over images prepared as
    evaluation prepares them (`loader`: unaugmented) fits the BatchNorm layers to what they will
    score ("precise BN"; Touvron et al. 2019 adapt BatchNorm to the test resolution the same way).
    Weights are not touched. Returns the number of images used; 0 when the model has no BatchNorm.
    """
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not layers or max_images <= 0:
        return 0
    was_training = model.training
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # None: a cumulative average over all batches seen
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    model.train()
    seen = 0
    try:
        for images, _ in loader:
            images = images[: max_images - seen].to(device, non_blocking=True, memory_format=memory_format)
            with autocast(device):
                model(images)
            seen += images.shape[0]
            if seen >= max_images:
                break
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
        model.train(was_training)
    return seen


# -- one epoch of a run -------------------------------------------------------------------------
def _load_previous(layout: RunLayout, epoch: int, config: RunConfig) -> dict | None:
    """The checkpoint epoch `epoch` starts from (None for epoch 1), checked against `config`."""
    if epoch == 1:
        return None
    path = layout.checkpoint(epoch - 1)
    if not path.is_file():
        trained = layout.trained_epochs()
        raise FileNotFoundError(
            f"{path}: epoch {epoch} starts from epoch {epoch - 1}'s checkpoint, which does not exist "
            f"(trained epochs: {', '.join(map(str, trained)) or 'none'}); train epoch {epoch - 1} first"
        )
    checkpoint = load_checkpoint(path)
    missing = sorted({"model", "optimizer", "scheduler", "rng", "epoch", "config"} - set(checkpoint))
    if missing:
        raise ValueError(f"{path}: not a training checkpoint (missing {', '.join(missing)})")
    if checkpoint["epoch"] != epoch - 1:
        raise ValueError(f"{path}: holds epoch {checkpoint['epoch']}, expected {epoch - 1}")
    saved = RunConfig.from_dict(checkpoint["config"], source=f"{path} config")
    config.check_resumable(saved, where=str(path))
    return checkpoint


_process_trained = False  # has this process trained an epoch yet (see startup_s)


def train_epoch(run_dir: str | Path, epoch: int, config: RunConfig, *, rank: Rank = Rank.single()) -> dict:
    """Train epoch `epoch` (1-based) of the run; write checkpoints/epoch_K.pt and metrics/train_epoch_K.json.

    Epoch 1 starts from a fresh model (model_from_config); epoch K > 1 from epoch K-1's checkpoint,
    restoring model, optimizer, schedule and RNG. With the same seed, re-running an epoch on CPU
    writes identical weights: the shuffle and worker augmentation are seeded from (seed, epoch)
    and the main-process RNG comes from the previous checkpoint.

    `rank`: this process's place when faceattr.engine.distributed spreads the epoch over several
    (each rank trains its share of every batch; only rank 0 writes).

    Besides the training figures, the metrics file records what the epoch task cost apart from the
    loop (each epoch is its own process): "startup_s" (process start to here, Linux only; None
    for a process's later epochs, and under DDP, where this process is a spawned rank, not the
    task's), "load_s" (checkpoint and model), "upload_s" (the train loader:
    on the fast path, the split's copy to the GPU), "compile_s" (with torch.compile, the first
    step, which compiles), "recalibration_s", "save_s" and "task_s" (all of it, start-up included
    when measured).
    """
    global _process_trained
    # Start-up counts for the first epoch of a process only: `faceattr fit` trains all in one.
    entered = time.perf_counter()
    startup = None if _process_trained or rank.distributed else process_age_s()
    _process_trained = True
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
        raise ValueError(f"epoch: {epoch!r} must be an integer >= 1")
    run_dir = Path(run_dir)
    layout = RunLayout(run_dir)
    device = parallel.rank_device(resolve_device(config.device), rank)
    previous = _load_previous(layout, epoch, config)

    if previous is None:
        if config.weights == "none" and config.freeze_children > 0:
            log.warning("freeze_children=%d with weights 'none' freezes random layers, which then never learn; "
                        "train from scratch with freeze_children 0", config.freeze_children)
        seed_everything(config.seed)  # the fresh head's initialisation depends on it
        model = model_from_config(config)
    else:
        # The weights come from the checkpoint: do not fetch pretrained ones again.
        model = model_from_config(config.replace(weights="none"))
        model.load_state_dict(previous["model"])
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    prepare_cuda(device)
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config)
    if previous is not None:
        optimizer.load_state_dict(previous["optimizer"])
        if scheduler is not None and previous["scheduler"] is not None:
            scheduler.load_state_dict(previous["scheduler"])
        set_rng_state(previous["rng"])
    synchronize(device)
    parts = {"startup_s": startup, "load_s": time.perf_counter() - entered}

    clock = time.perf_counter()
    loader = make_loader(run_dir, config, "train", train=True, device=device, epoch=epoch)
    loader = parallel.shard_loader(loader, config, epoch, rank)
    synchronize(device)
    parts["upload_s"] = time.perf_counter() - clock
    loss_fn = make_loss(config, loader.dataset.labels).to(device)
    runner = parallel.wrap_model(model, device, rank)
    compiled = should_compile(config.compile, device)
    if compiled:
        use_compile_cache(settings.home())
        runner = torch.compile(runner)

    lr = optimizer.param_groups[0]["lr"]
    log.info(
        "epoch %d: %d train images, %s on %s, batch %d, lr %.3g, %d loader workers",
        epoch, len(loader.dataset), config.arch, device, loader.batch_size or config.batch_size, lr, loader.num_workers,
    )
    stats = train_one_epoch(runner, loader, loss_fn, optimizer, device, desc=f"epoch {epoch}", rank=rank)
    stats = parallel.reduce_stats(stats, device, rank)
    parts["compile_s"] = stats["warmup_s"] if compiled else 0.0
    if not math.isfinite(stats["loss"]):
        # Nothing is written: a diverged model must not become the next epoch's starting point.
        raise RuntimeError(f"epoch {epoch}: training diverged (mean loss {stats['loss']}); try a lower lr than {lr:g}")
    if scheduler is not None:
        scheduler.step()
    clock = time.perf_counter()
    if config.recalibrate_bn > 0:
        # On every DDP rank, over the same images (rank 0's result is the one saved), so that the
        # ranks stay in step; the images come from the train loader's data, not a second upload.
        log.info("epoch %d: recomputing BatchNorm statistics on up to %d unaugmented train images", epoch,
                 config.recalibrate_bn)
        plain = _unaugmented(loader, lambda: make_loader(run_dir, config, "train", train=False, device=device))
        stats["bn_recalibration_images"] = recalibrate_batchnorm(model, plain, device, config.recalibrate_bn)
        synchronize(device)
    parts["recalibration_s"] = time.perf_counter() - clock

    checkpoint = {
        "model": model.state_dict(),  # the uncompiled module's keys
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rng_state(),
        "epoch": epoch,
        "config": config.to_dict(),
        "train": stats,
    }
    path = layout.checkpoint(epoch)
    clock = time.perf_counter()
    if rank.is_main:  # DDP ranks hold the same weights; one writer
        save_checkpoint(checkpoint, path)
    parts["save_s"] = time.perf_counter() - clock
    parts["task_s"] = (startup or 0.0) + time.perf_counter() - entered
    if rank.is_main:
        write_epoch_metrics(run_dir, "train", epoch, {**stats, **parts, "lr": lr})
    loop_rate = stats["loop_images_per_second"]
    log.info(
        "epoch %d: loss %.4f, accuracy %.4f, %s img/s in the loop, task %.0f s (start-up %s s, load %.1f s, "
        "upload %.1f s, first step %.1f s, recalibration %.1f s, save %.1f s) -> %s",
        epoch, stats["loss"], stats["accuracy"], "-" if loop_rate is None else f"{loop_rate:.1f}", parts["task_s"],
        "-" if startup is None else f"{startup:.1f}", parts["load_s"], parts["upload_s"], stats["warmup_s"],
        parts["recalibration_s"], parts["save_s"], path,
    )
    return {"epoch": epoch, "checkpoint": str(path), "lr": lr, **stats, **parts}


def _unaugmented(loader, make_plain):
    """The train images as evaluation prepares them (unaugmented, in split order), for recalibration.

    The fast path's CachedLoader is viewed without augmentation and unsharded, sharing its cache
    and any GPU-resident copy (a second loader would upload the whole split again); the PIL path
    builds its evaluation loader with `make_plain`.
    """
    if not hasattr(loader, "shard"):
        return make_plain()
    plain = loader.shard(0, 1)  # a copy: the training loader is left as it is
    plain.train = False
    return plain
