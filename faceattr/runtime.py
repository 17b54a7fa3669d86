"""Where and how a run executes: device choice, mixed precision, seeding, workers.

Everything here is about execution, not about what the model learns, so it is shared by
training, evaluation and prediction.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)


def resolve_device(name: str | None = None) -> torch.device:
    """`None` or "auto": CUDA when available, else CPU; "cpu", "cuda", "cuda:N" as given."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device: {name!r} is not one of auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device: {name!r} is not one of auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device: {name!r} requested but CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RuntimeError(f"device: {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    return device


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (no loss scaling needed); a no-op on CPU, where fp32 is faster."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare_cuda(device: torch.device) -> None:
    """On CUDA, let cuDNN time the candidate algorithms for each convolution shape and keep the
    fastest (cudnn.benchmark): training, evaluation and scoring run the same shapes batch after
    batch, so the one-off timing pays (most for grouped convolutions). Nothing to do on CPU."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on `device` (CUDA runs asynchronously); nothing to wait for on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all CUDA devices too)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def derive_seed(*parts: int) -> int:
    """A stable 63-bit seed from integers such as (config.seed, epoch): same parts, same seed."""
    digest = hashlib.sha256(":".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def rng_state() -> dict:
    """The torch RNG state (CPU and CUDA) as tensors, so a checkpoint can carry it."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return {"torch": torch.get_rng_state(), "cuda": cuda}


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` captured; CUDA state only when the device count matches."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def resolve_num_workers(num_workers: int) -> int:
    """-1 means one DataLoader worker per core, at most 8; 0 loads in the main process."""
    if num_workers == -1:
        return min(8, os.cpu_count() or 1)
    if num_workers < 0:
        raise ValueError(f"num_workers: {num_workers} must be -1 (auto) or >= 0")
    return num_workers


def should_compile(compile_flag: bool | None, device: torch.device) -> bool:
    """config.compile: None means on for CUDA, off on CPU (compiling costs more than it saves there)."""
    return device.type == "cuda" if compile_flag is None else compile_flag


def process_age_s() -> float | None:
    """Seconds since this process started (interpreter start-up and imports included), from Linux's
    /proc; None where that cannot be read."""
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            # Field 22 (after the parenthesised command name) is the start time in clock ticks since boot.
            started = int(stat.read().rpartition(")")[2].split()[19]) / os.sysconf("SC_CLK_TCK")
            return max(0.0, float(uptime.read().split()[0]) - started)
    except (OSError, ValueError, IndexError):
        return None


def use_compile_cache(home: Path) -> Path:
    """Point torch.compile's on-disk caches (inductor's FX-graph and autotuning caches) at
    HOME/compile-cache/torch-VERSION unless TORCHINDUCTOR_CACHE_DIR is set, so every epoch task of a
    run, and later runs, reuse the kernels compiled once. Inductor keys each entry by the graph, its
    inputs and the torch build, so a changed model or torch never loads a stale one; the version
    folder only keeps caches of old torch versions apart and easy to delete. Returns the folder used."""
    folder = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if not folder:
        folder = str(home / "compile-cache" / f"torch-{torch.__version__}")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
    return Path(folder)


def worker_init_fn(worker_id: int) -> None:
    """Seed Python and NumPy in a DataLoader worker from the torch seed the loader gave it.

    The loader derives each worker's torch seed from its generator, so seeding the generator
    makes shuffling and augmentation reproducible whatever the number of workers.
    """
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
