"""What one data-parallel rank needs inside the training loop: its device, its share of the data,
the DDP wrapper and the figures summed over ranks.

Every helper takes a `Rank`; for `Rank.single()` (one process) each one hands its input back
unchanged, so faceattr.engine.train runs the same code with one process or with N. The processes
themselves are started by faceattr.engine.distributed.

How an epoch is split. The global batch stays config.batch_size: every rank draws exactly the
single-process loader's shuffle (seeded from (seed, epoch)), cuts it into the same global batches
and takes its share of each (the PIL path: every N-th image, RankBatches; the cache path: the
r-th contiguous slice, CachedLoader), so together the ranks see each global batch once, and DDP
averages their gradients. A last global batch smaller than N is dropped on both paths: some rank
would get none of it. Each rank has its own augmentation stream.

What differs from one process, and why results are close but not equal: random flips and crops
are drawn per rank, BatchNorm layers in train mode normalise with per-rank batch statistics (see
wrap_model), and rank 0's BatchNorm running statistics are the ones saved (or recalibrated).
tests/engine/test_distributed.py states the tolerance.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from faceattr.run.config import RunConfig
from faceattr.runtime import derive_seed


@dataclass(frozen=True)
class Rank:
    """This process's place among the `world_size` processes that train one epoch together."""

    rank: int = 0
    world_size: int = 1

    def __post_init__(self):
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank: {self.rank} is not in 0..{self.world_size - 1} (world size {self.world_size})")

    @classmethod
    def single(cls) -> "Rank":
        return cls(0, 1)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes the checkpoint and the metrics."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def rank_device(device: torch.device, rank: Rank) -> torch.device:
    """One GPU per rank on CUDA (cuda:rank, which distributed._rank_main made current); CPU ranks share the CPU."""
    if not rank.distributed or device.type != "cuda":
        return device
    return torch.device("cuda", rank.rank)


def wrap_model(model: nn.Module, device: torch.device, rank: Rank) -> nn.Module:
    """DistributedDataParallel around `model` for several ranks, else `model` itself; the caller
    keeps `model` (unprefixed keys) for saving.

    BatchNorm layers stay per-rank on CUDA as on CPU (no SyncBatchNorm): frozen ones get no
    gradient, so syncing them would only cost an all-reduce per layer per step; trainable ones see
    batch_size / world_size images per rank, as in torchvision's reference recipe without
    --sync-bn; and torch.compile graph-breaks on SyncBatchNorm. One rule everywhere also keeps the
    CUDA ranks what the CPU test checks. The caller compiles the DDP module (torch.compile(DDP(m)),
    PyTorch's documented order), so compiled graphs split at DDP's gradient buckets and each
    bucket's all-reduce overlaps the rest of the backward pass.
    """
    if not rank.distributed:
        return model

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


class RankBatches(torch.utils.data.Sampler):
    """Rank `rank`'s share of every global batch of `batches` (the PIL path): every N-th image of each.

    `batches` is the single-process loader's batch sampler; every rank iterates its own copy
    with the same seed, so all ranks cut the same global batches. Each rank gets the same number
    of batches (a DDP requirement: every rank must join every gradient all-reduce), so a last
    global batch smaller than the world size is dropped: the only images an epoch may skip.
    """

    def __init__(self, batches, rank: Rank):
        if batches.batch_size < rank.world_size:
            raise ValueError(f"batch_size: {batches.batch_size} cannot be split over {rank.world_size} processes")
        self.batches, self.rank, self.world_size = batches, rank.rank, rank.world_size

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            if len(batch) >= self.world_size:
                yield batch[self.rank::self.world_size]

    def __len__(self) -> int:
        full, rest = divmod(len(self.batches.sampler), self.batches.batch_size)
        return full + (1 if rest >= self.world_size and not self.batches.drop_last else 0)


def shard_loader(loader, config: RunConfig, epoch: int, rank: Rank):
    """A loader like `loader` (the single-process one) that yields only this rank's share.

    It shares `loader`'s dataset, batch sampler and seeded generator, so each rank draws exactly
    the single-process shuffle. Augmentation gets its own stream per rank.
    """
    if not rank.distributed:
        return loader

    if hasattr(loader, "shard"):  # the decode-once CachedLoader slices its own global batches
        return loader.shard(rank.rank, rank.world_size)
    if loader.batch_sampler is None:
        raise ValueError("shard_loader: the loader has no batch sampler to split")
    if not rank.is_main:
        # With no loader workers the main process draws the flips and crops; rank 0's RNG is
        # the one checkpointed, so only the other ranks move to their own stream.
        torch.manual_seed(derive_seed(config.seed, epoch, rank.rank))
    return DataLoader(
        loader.dataset,
        batch_sampler=RankBatches(loader.batch_sampler, rank),
        num_workers=loader.num_workers,
        pin_memory=loader.pin_memory,
        worker_init_fn=functools.partial(_rank_worker_init, rank.rank, loader.worker_init_fn),
        generator=loader.generator,
        prefetch_factor=loader.prefetch_factor if loader.num_workers > 0 else None,
    )


def _rank_worker_init(rank: int, then, worker_id: int) -> None:
    """A loader worker's seed mixed with the rank, so ranks do not repeat each other's augmentation."""
    torch.manual_seed(derive_seed(torch.initial_seed(), rank) % 2**63)
    if then is not None:
        then(worker_id)


def reduce_stats(stats: dict, device: torch.device, rank: Rank) -> dict:
    """train_one_epoch's figures over all ranks: image-weighted loss and accuracy, total images,
    the slowest rank's times (every "seconds" and "*_s" figure) and the ranks' steady rates summed."""
    if not rank.distributed:
        return stats

    images = float(stats["images"])
    rate = stats.get("loop_images_per_second")
    sums = torch.tensor([stats["loss"] * images, stats["accuracy"] * images, images,
                         float("nan") if rate is None else rate], dtype=torch.float64, device=device)
    dist.all_reduce(sums)
    timed = sorted(k for k in stats if k == "seconds" or k.endswith("_s"))
    slowest = torch.tensor([float(stats[k]) for k in timed], dtype=torch.float64, device=device)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    loss, accuracy, total, rates = sums.tolist()
    total = int(total)
    out = {**stats, "loss": loss / total, "accuracy": accuracy / total, "images": total,
           **dict(zip(timed, slowest.tolist()))}
    out["images_per_second"] = total / out["seconds"] if out["seconds"] > 0 else 0.0
    if "loop_images_per_second" in stats:
        out["loop_images_per_second"] = None if math.isnan(rates) else rates
    return out


def expected_images(size: int, batch_size: int, world_size: int) -> int:
    """Images one DDP epoch trains on the PIL path (see RankBatches): all but a last batch smaller
    than world_size. The cache path's training loader also drops any last partial batch."""
    rest = size % batch_size
    return size - rest if 0 < rest < world_size else size
