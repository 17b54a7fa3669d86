"""What the GPU check's processes share (benchmarks/gpu_check.py): the import blocker, the sizes,
running a child process within the section's deadline, and short texts for the JSON."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the checkout, as on the device: not an installed package
    sys.path.insert(0, str(REPO))

from faceattr.run.config import PRESETS, SCORE_BATCH_SIZES  # noqa: E402 - after the path is set

BLOCKED = ("airflow", "sqlalchemy")
# Installed first in every process this check starts: importing a blocked package fails loudly.
BLOCKER = f"""
import sys
class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ImportError(f"gpu_check: {{name}} imported; the device has neither Airflow nor SQLAlchemy")
sys.meta_path.insert(0, _Blocked())
"""
CELEBA_TRAIN = 162_770  # CelebA's train split (list_eval_partition.txt): the fixed-cost section's upload


class Sizes:
    def __init__(self, dry_run: bool):
        self.dry_run = dry_run
        if dry_run:  # the same code paths, small enough for two CPU cores
            self.arch, self.batch, self.score_batch = "resnet18", 8, 8
            self.pipeline_images, self.steady_images, self.steady_passes = 40, 16, 1
            self.score_sizes, self.sync_images = (8, 24), 16
            self.full_train_images = 2_000  # the fixed-cost section's upload, scaled down
        else:  # the GPU preset's setting: ResNeXt50_32x4d, first 6 children frozen, its batches
            self.arch, self.batch, self.score_batch = "resnext50_32x4d", PRESETS["gpu"]["batch_size"], SCORE_BATCH_SIZES["gpu"]
            self.pipeline_images, self.steady_images, self.steady_passes = 1500, 16 * self.batch, 3
            self.score_sizes, self.sync_images = (2048, 16384), 4 * self.batch
            self.full_train_images = CELEBA_TRAIN


def run_process(command: list[str], ctx: dict, *, timeout: float, env: dict | None = None) -> dict:
    """Run a process with PYTHONPATH=repo and this check's FACEATTR_HOME; rc, seconds and output tails.

    It never runs past the section's deadline (ctx["deadline"], time.time()): then it and whatever
    it started (its own session) are killed. TORCHINDUCTOR_CACHE_DIR is not passed on (this process
    may have set it, use_compile_cache): the child finds the compile cache under its FACEATTR_HOME,
    so the pipeline's epoch 1 starts cold."""
    if ctx.get("deadline"):  # a hung process must not take the rest of the budget with it
        timeout = max(1.0, min(timeout, ctx["deadline"] - time.time()))
    inherited = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    full_env = {**inherited, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                "FACEATTR_HOME": str(ctx["work"] / "home"), "FACEATTR_WORLD_SIZE": "1", **(env or {})}
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env,
                               cwd=REPO, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        return {"rc": None, "seconds": round(time.perf_counter() - start, 2), "stdout_tail": tail(stdout),
                "stderr_tail": f"timed out after {timeout:.0f} s: {tail(stderr)}"}
    return {"rc": process.returncode, "seconds": round(time.perf_counter() - start, 2),
            "stdout_tail": tail(stdout), "stderr_tail": tail(stderr)}




def tail(text, lines: int = 12) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return "\n".join((text or "").strip().splitlines()[-lines:])


def line(value) -> str:
    return (str(value).strip().splitlines() or [type(value).__name__])[0][:300]


def short(filename: str) -> str:
    path = Path(filename)
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else "/".join(path.parts[-3:])


def rounded(value):
    return round(value, 4) if isinstance(value, float) else value
