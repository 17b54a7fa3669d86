"""Start the processes that train one epoch together; the only entry point to training.

`launch_epoch(run_dir, K, config)` is what `faceattr train`, `faceattr fit` and the Airflow train
task call. With one process (the default on CPU or a single GPU) it runs
faceattr.engine.train.train_epoch here; with more it spawns `world_size` processes with
torch.multiprocessing (NCCL on CUDA, one GPU each; gloo on CPU), each running
train_epoch(..., rank=Rank(r, N)), and returns rank 0's result. How the ranks split an epoch is
faceattr.engine.parallel's business.

The processes are spawned, so a script that launches more than one needs the usual
`if __name__ == "__main__":` guard (the airflow and faceattr commands have it).

Setting (environment, read by the worker that trains): FACEATTR_WORLD_SIZE (faceattr.settings):
auto (default): every visible GPU when the run's device is "auto" or "cuda", else 1; or a number
of processes (gloo processes on CPU).
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from faceattr import settings
from faceattr.data.cache import ensure_split_cache
from faceattr.data.loaders import load_split_frame, resolve_data_path
from faceattr.engine import train
from faceattr.engine.parallel import Rank
from faceattr.fsutil import read_json, write_json
from faceattr.run.config import RunConfig
from faceattr.runtime import resolve_device, resolve_num_workers

log = logging.getLogger(__name__)

ENV = settings.WORLD_SIZE


def world_size_for(config: RunConfig) -> int:
    """How many processes train one epoch of `config` on this machine ($FACEATTR_WORLD_SIZE)."""
    size = settings.world_size()
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if size is None:  # auto
        return gpus if gpus > 1 and config.device in ("auto", "cuda") else 1
    if size > 1 and config.device.startswith("cuda:"):
        raise ValueError(f"{ENV}={size}: the run's device {config.device!r} names one GPU; use device 'cuda' or 'auto'")
    uses_cuda = config.device.startswith("cuda") or (config.device == "auto" and gpus > 0)
    if uses_cuda and size > gpus:
        raise ValueError(f"{ENV}={size}: only {gpus} CUDA device(s) are visible on this worker")
    return size


def backend_for(config: RunConfig) -> str:
    """NCCL when the ranks train on GPUs, gloo on CPU."""
    return "nccl" if resolve_device(config.device).type == "cuda" else "gloo"


def launch_epoch(run_dir: str | Path, epoch: int, config: RunConfig, *, world_size: int | None = None) -> dict:
    """Train epoch `epoch` in one process or, when `world_size` (default world_size_for) > 1, with DDP.

    Returns faceattr.engine.train.train_epoch's result (rank 0's, with figures summed over ranks)
    and "world_size".
    """
    size = world_size_for(config) if world_size is None else world_size
    if size < 1:
        raise ValueError(f"world_size: {size} must be >= 1")
    if size == 1:
        return {**train.train_epoch(run_dir, epoch, config), "world_size": 1}

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
    frame = load_split_frame(run_dir, root=config.root)
    image_ids = frame.index[frame["split"] == "train"].tolist()
    if resolve_data_path(config, run_dir, "train", image_ids, resolve_device(config.device)) == "cache":
        workers = resolve_num_workers(config.num_workers)
        ensure_split_cache(run_dir, "train", image_ids, config.root, num_workers=workers)


def _rank_main(rank: int, world_size: int, backend: str, rendezvous: str, run_dir: str, epoch: int,
               config: dict, result_path: str) -> None:
    """Body of one spawned rank."""
    options = {}
    if backend == "gloo":  # share the cores instead of oversubscribing them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    else:  # bind the NCCL communicator to this rank's GPU now, not lazily at the first collective
        torch.cuda.set_device(rank)
        options["device_id"] = torch.device("cuda", rank)
    dist.init_process_group(backend, init_method=rendezvous, rank=rank, world_size=world_size, **options)
    try:
        result = train.train_epoch(run_dir, epoch, RunConfig.from_dict(config), rank=Rank(rank, world_size))
        if rank == 0:
            write_json(result_path, result)
    finally:
        dist.destroy_process_group()
