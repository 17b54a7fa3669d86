"""CPU throughput: train and predict img/s per architecture, and the PIL decode+augment rate.

    python benchmarks/cpu_throughput.py [--archs resnet18 resnext50_32x4d] [--batch-size 16]

Models use random weights (weights none) and random 3x218x178 input, so no data or download is
needed; the decode figure reads synthetic JPEGs written to a temporary folder. The numbers say
how long a CPU-only run would take, e.g. one CelebA epoch (162,770 train images).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from faceattr.run.config import RunConfig
from faceattr.data.loaders import CelebAImages
from faceattr.data.transforms import train_transform
from faceattr.data.images import IMAGE_SIZE
from faceattr.attributes import ATTRIBUTES
from faceattr.model import build_model
from faceattr.runtime import resolve_num_workers
from faceattr.engine.train import AttributeLoss, make_optimizer


def _timed(step, warmup: int, batches: int) -> float:
    """Seconds per call of `step`, after `warmup` untimed calls."""
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(batches):
        step()
    return (time.perf_counter() - start) / batches


def model_throughput(arch: str, batch_size: int, warmup: int, batches: int) -> dict[str, float]:
    """Train (forward + backward + Adamax step, first 6 children frozen) and predict img/s."""
    width, height = IMAGE_SIZE
    images = torch.randn(batch_size, 3, height, width)
    targets = torch.randint(0, 2, (batch_size, len(ATTRIBUTES))).float() * 2 - 1
    model = build_model(arch, weights="none")
    optimizer = make_optimizer(model, RunConfig(arch=arch, weights="none"))
    loss_fn = AttributeLoss("mse")

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(images), targets).backward()
        optimizer.step()

    def predict_step() -> None:
        with torch.inference_mode():
            model(images)

    model.train()
    train_s = _timed(train_step, warmup, batches)
    model.eval()
    predict_s = _timed(predict_step, warmup, batches)
    return {"train": batch_size / train_s, "predict": batch_size / predict_s}


def decode_throughput(n_images: int, batch_size: int, num_workers: int) -> float:
    """img/s of the training DataLoader (JPEG decode + flip/resize/crop + normalise) on synthetic JPEGs."""
    width, height = IMAGE_SIZE
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ids = [f"{i + 1:06d}.jpg" for i in range(n_images)]
        # Smooth gradients plus noise compress like photos better than pure noise does.
        ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
        for image_id in ids:
            pixels = ramp + rng.normal(0, 20, (height, width, 3)).astype(np.float32) + rng.uniform(0, 80, 3)
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / image_id, quality=90)
        labels = np.where(rng.random((n_images, len(ATTRIBUTES))) < 0.5, -1, 1).astype(np.int8)
        dataset = CelebAImages(folder, ids, labels, train_transform())
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=num_workers)
        for _ in loader:  # warm-up: page cache and worker start
            break
        start = time.perf_counter()
        seen = sum(batch[0].shape[0] for batch in loader)
        return seen / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["resnet18", "resnext50_32x4d"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch intra-op threads")
    parser.add_argument("--images", type=int, default=256, help="synthetic JPEGs for the decode figure")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch {args.batch_size}, "
          f"{args.batches} timed batch(es) after {args.warmup} warm-up; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other work slows every figure)")
    for arch in args.archs:
        rates = model_throughput(arch, args.batch_size, args.warmup, args.batches)
        print(f"{arch:>20}: train {rates['train']:7.1f} img/s   predict {rates['predict']:7.1f} img/s")
    for workers in sorted({0, resolve_num_workers(-1)}):
        rate = decode_throughput(args.images, 32, workers)
        print(f"{'decode+augment':>20}: {rate:7.1f} img/s with {workers} loader worker(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
