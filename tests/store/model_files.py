"""A model.pt as `faceattr select` exports it, as far as the registry reads it (run, arch, epoch and
the digest beside it), without building a network: the store tests stay fast."""
from __future__ import annotations

from pathlib import Path

import torch

from faceattr.checkpoint import save_checkpoint
from faceattr.run import metrics
from faceattr.run.config import RunConfig
from faceattr.run.layout import RunLayout


def write_model_file(run_dir: Path, run: str | None = None, *, epoch: int = 2, arch: str | None = None,
                     fill: float = 0.0) -> Path:
    arch = arch or RunConfig.load(run_dir).arch
    return save_checkpoint({"state_dict": {"w": torch.full((1,), fill)}, "arch": arch, "epoch": epoch,
                            "run": run or Path(run_dir).name}, RunLayout(run_dir).model)


def retest(run_dir: Path, epoch: int = 2) -> Path:
    """Write the test metrics again, as `faceattr evaluate --epoch best --split test` does after a new select."""
    data = metrics.read_epoch_metrics(run_dir, "test", epoch)
    data.pop("model_sha256", None)
    return metrics.write_epoch_metrics(run_dir, "test", epoch, data)
