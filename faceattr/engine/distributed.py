"""One training epoch spread over several processes with torch DistributedDataParallel.

`train_epoch(run_dir, K, config)` is what the Airflow train task calls: with one process (the
default on CPU or a single GPU) it is faceattr.engine.train.train_epoch; with more it starts
`world_size` processes with torch.multiprocessing (NCCL on CUDA, one GPU each; gloo on CPU),
each running faceattr.engine.train.train_epoch(..., rank=r, world_size=N), and returns rank 0's result.

How an epoch is split. The global batch stays config.batch_size: every rank draws exactly the
single-process loader's shuffle (seeded from (seed, epoch)), cuts it into the same global batches
and takes every N-th image of each, so together the ranks see each global batch once, and DDP
averages their gradients. Each rank has its own augmentation stream. Only rank 0
writes the checkpoint and the metrics file; loss, accuracy and image counts are summed over ranks.

What differs from one process, and why results are close but not equal: random flips and crops
are drawn per rank, BatchNorm layers in train mode normalise with per-rank batch statistics
(SyncBatchNorm is used on CUDA, where it exists; on CPU it does not), and rank 0's BatchNorm
running statistics are the ones saved. tests/engine/test_distributed.py states the tolerance.

The processes are spawned, so a script that calls train_epoch with world_size > 1 needs the
usual `if __name__ == "__main__":` guard (the airflow and faceattr commands have it).

Settings (environment, read by the worker that trains):
    FACEATTR_WORLD_SIZE   auto (default): every visible GPU when the run's device is "auto" or
                          "cuda", else 1; or a number of processes (gloo processes on CPU).
"""
from __future__ import annotations

import functools
import logging
import os
import tempfile
from pathlib import Path
from typing import Iterator

import torch

from faceattr.config import RunConfig
from faceattr.fsutil import read_json, write_json

log = logging.getLogger(__name__)

ENV = "FACEATTR_WORLD_SIZE"


# -- choosing and starting the processes ---------------------------------------------------------
def world_size_for(config: RunConfig) -> int:
    """How many processes train one epoch of `config` on this machine ($FACEATTR_WORLD_SIZE)."""
    raw = os.environ.get(ENV, "").strip().lower() or "auto"
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if raw == "auto":
        return gpus if gpus > 1 and config.device in ("auto", "cuda") else 1
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{ENV}: {raw!r} must be 'auto' or a number of processes >= 1")
    size = int(raw)
    if size > 1 and config.device.startswith("cuda:"):
        raise ValueError(f"{ENV}={size}: the run's device {config.device!r} names one GPU; use device 'cuda' or 'auto'")
    uses_cuda = config.device.startswith("cuda") or (config.device == "auto" and gpus > 0)
    if uses_cuda and size > gpus:
        raise ValueError(f"{ENV}={size}: only {gpus} CUDA device(s) are visible on this worker")
    return size


def backend_for(config: RunConfig) -> str:
    """NCCL when the ranks train on GPUs, gloo on CPU."""
    from faceattr.runtime import resolve_device

    return "nccl" if resolve_device(config.device).type == "cuda" else "gloo"


def train_epoch(run_dir: str | Path, epoch: int, config: RunConfig, *, world_size: int | None = None) -> dict:
    """Train epoch `epoch` in one process or, when `world_size` (default world_size_for) > 1, with DDP.

    Returns faceattr.engine.train.train_epoch's result (rank 0's, with figures summed over ranks) and
    "world_size".
    """
    from faceattr.engine import train

    size = world_size_for(config) if world_size is None else world_size
    if size < 1:
        raise ValueError(f"world_size: {size} must be >= 1")
    if size == 1:
        return {**train.train_epoch(run_dir, epoch, config), "world_size": 1}

    import torch.multiprocessing as mp

    backend = backend_for(config)
    log.info("epoch %d: spreading over %d %s processes", epoch, size, backend)
    _build_cache_once(run_dir, config)
    with tempfile.TemporaryDirectory(prefix="faceattr-ddp-") as tmp:
        result_path = Path(tmp) / "result.json"
        # A file rendezvous needs no free port and works for gloo and NCCL on one machine.
        rendezvous = f"file://{Path(tmp) / 'rendezvous'}"
        mp.spawn(_rank_main, args=(size, backend, rendezvous, str(run_dir), epoch, config.to_dict(), str(result_path)),
                 nprocs=size, join=True)
        if not result_path.is_file():
            raise RuntimeError(f"epoch {epoch}: the {size} DDP processes ended without rank 0's result")
        return {**read_json(result_path), "world_size": size}


def _build_cache_once(run_dir: str | Path, config: RunConfig) -> None:
    """Decode the train split's cache here when the ranks will read it; else they would all build it at once."""
    from faceattr.data.cache import ensure_split_cache
    from faceattr.data.loaders import load_split_frame, resolve_data_path
    from faceattr.runtime import resolve_device, resolve_num_workers

    frame = load_split_frame(run_dir, root=config.root)
    image_ids = frame.index[frame["split"] == "train"].tolist()
    if resolve_data_path(config, run_dir, "train", image_ids, resolve_device(config.device)) == "cache":
        workers = resolve_num_workers(config.num_workers)
        ensure_split_cache(run_dir, "train", image_ids, config.root, num_workers=workers)


def _rank_main(rank: int, world_size: int, backend: str, rendezvous: str, run_dir: str, epoch: int,
               config: dict, result_path: str) -> None:
    """Body of one spawned rank."""
    import torch.distributed as dist

    from faceattr.engine import train

    if backend == "gloo":  # share the cores instead of oversubscribing them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    dist.init_process_group(backend, init_method=rendezvous, rank=rank, world_size=world_size)
    try:
        result = train.train_epoch(run_dir, epoch, RunConfig.from_dict(config), rank=rank, world_size=world_size)
        if rank == 0:
            write_json(result_path, result)
    finally:
        dist.destroy_process_group()


# -- helpers faceattr.engine.train uses inside each rank ---------------------------------------------------
def rank_device(device: torch.device, rank: int) -> torch.device:
    """One GPU per rank on CUDA (cuda:rank); CPU ranks share the CPU."""
    if device.type != "cuda":
        return device
    torch.cuda.set_device(rank)
    return torch.device("cuda", rank)


def wrap_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around `model` (SyncBatchNorm first on CUDA); the caller keeps `model` for saving."""
    from torch.nn.parallel import DistributedDataParallel

    if device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DistributedDataParallel(model, device_ids=[device.index])
    return DistributedDataParallel(model)


class RankBatches(torch.utils.data.Sampler):
    """Rank `rank`'s share of every global batch of `batches`: every N-th image of each.

    `batches` is the single-process loader's batch sampler; every rank iterates its own copy
    with the same seed, so all ranks cut the same global batches. Each rank gets the same number
    of batches (a DDP requirement: every rank must join every gradient all-reduce), so a last
    global batch smaller than the world size is dropped: the only images an epoch may skip.
    """

    def __init__(self, batches, rank: int, world_size: int):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank: {rank} is not in 0..{world_size - 1}")
        if batches.batch_size < world_size:
            raise ValueError(f"batch_size: {batches.batch_size} cannot be split over {world_size} processes")
        self.batches, self.rank, self.world_size = batches, rank, world_size

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            if len(batch) >= self.world_size:
                yield batch[self.rank::self.world_size]

    def __len__(self) -> int:
        full, rest = divmod(len(self.batches.sampler), self.batches.batch_size)
        return full + (1 if rest >= self.world_size else 0)


def shard_loader(loader, config: RunConfig, epoch: int, rank: int, world_size: int):
    """A DataLoader like `loader` (the single-process one) that yields only this rank's share.

    It shares `loader`'s dataset, batch sampler and seeded generator, so each rank draws exactly
    the single-process shuffle. Augmentation gets its own stream per rank.
    """
    from torch.utils.data import DataLoader

    from faceattr.runtime import derive_seed

    if hasattr(loader, "shard"):  # the decode-once CachedLoader slices its own global batches
        return loader.shard(rank, world_size)
    if loader.batch_sampler is None:
        raise ValueError("shard_loader: the loader has no batch sampler to split")
    if rank > 0:
        # With no loader workers the main process draws the flips and crops; rank 0's RNG is
        # the one checkpointed, so only the other ranks move to their own stream.
        torch.manual_seed(derive_seed(config.seed, epoch, rank))
    return DataLoader(
        loader.dataset,
        batch_sampler=RankBatches(loader.batch_sampler, rank, world_size),
        num_workers=loader.num_workers,
        pin_memory=loader.pin_memory,
        worker_init_fn=functools.partial(_rank_worker_init, rank, loader.worker_init_fn),
        generator=loader.generator,
        prefetch_factor=loader.prefetch_factor if loader.num_workers > 0 else None,
    )


def _rank_worker_init(rank: int, then, worker_id: int) -> None:
    """A loader worker's seed mixed with the rank, so ranks do not repeat each other's augmentation."""
    from faceattr.runtime import derive_seed

    torch.manual_seed(derive_seed(torch.initial_seed(), rank) % 2**63)
    if then is not None:
        then(worker_id)


def reduce_stats(stats: dict, device: torch.device) -> dict:
    """train_one_epoch's figures over all ranks: image-weighted loss and accuracy, total images, slowest time."""
    import torch.distributed as dist

    images = float(stats["images"])
    sums = torch.tensor([stats["loss"] * images, stats["accuracy"] * images, images], dtype=torch.float64,
                        device=device)
    dist.all_reduce(sums)
    seconds = torch.tensor([float(stats["seconds"])], dtype=torch.float64, device=device)
    dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
    total = int(sums[2].item())
    elapsed = float(seconds.item())
    return {
        **stats,
        "loss": sums[0].item() / total,
        "accuracy": sums[1].item() / total,
        "images": total,
        "seconds": elapsed,
        "images_per_second": total / elapsed if elapsed > 0 else 0.0,
    }


def expected_images(size: int, batch_size: int, world_size: int) -> int:
    """Images one DDP epoch trains on (see RankBatches): all but a last batch smaller than world_size."""
    rest = size % batch_size
    return size - rest if 0 < rest < world_size else size

