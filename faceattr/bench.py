"""`faceattr bench`: the write-up's recipe against faceattr's fast path, same data, same model, one run.

Three figures, each in images per second for both recipes and their ratio:

    data_path  one training pass of the data alone: the write-up's DataLoader (PIL decode +
               flip/resize/crop + normalise per image in worker processes) against the decode-once
               cache with batched tensor augmentation on the device (faceattr.data.loaders.CachedLoader)
    train      the training loop, data included: the write-up's fp32 eager loop at batch 64
               against faceattr.engine.train.train_one_epoch on the cache path (bf16 autocast,
               channels_last, torch.compile and cuDNN autotuning on CUDA, at the GPU preset's batch,
               faceattr.run.config.PRESETS["gpu"]), timed in steady state: putting the split on the
               device and the compile warm-up are reported apart
    score      scoring JPEG files: a PIL DataLoader + fp32 model against faceattr.engine.predict.predict
               (batched nvjpeg decode, bf16, channels_last on CUDA), both from their second batch
               (model load, loader start and first batch apart); predict's end-to-end rate and its fixed cost (model load, first batch, CSV
               writing) are reported beside it

The cache build (once per run) is reported beside them. Sizes: "small" (the CPU default:
resnet18, a few hundred synthetic images, about a minute on 2 cores) and "full" (the GPU
default: ResNeXt50_32x4d frozen-6, thousands of images). Models use random weights: speed does
not depend on them. Compile warm-up is timed apart from the epoch (it is paid once per process,
less with inductor's on-disk cache).
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from faceattr.data.cache import build_split_cache, cache_paths, open_cache
from faceattr.data.download import acquire
from faceattr.data.labels import read_attributes
from faceattr.data.layout import ATTR_FILE, celeba_dir, images_dir
from faceattr.data.loaders import CachedImages, CachedLoader, CelebAImages
from faceattr.data.transforms import eval_transform, train_transform
from faceattr.engine.predict import list_folder, predict
from faceattr.engine.train import AttributeLoss, make_optimizer, train_one_epoch
from faceattr.fsutil import read_json
from faceattr.model import build_model, export_model
from faceattr.run.config import PRESETS, RunConfig, SCORE_BATCH_SIZES
from faceattr.runtime import prepare_cuda, resolve_device, resolve_num_workers, should_compile, synchronize, worker_init_fn
from faceattr.synth.files import generate


@dataclass(frozen=True)
class BenchSize:
    arch: str
    images: int  # images in the data-path pass and the cache
    score_images: int  # JPEG files scored
    train_images: int  # images in each timed training epoch (a multiple of both batch sizes)
    synth_images: int  # distinct synthetic images drawn; copies fill up to `images`
    writeup_batch: int
    fast_batch: int
    score_batch: int
    train_passes: int = 1  # timed passes over the train_images, after the warm-up


SIZES = {
    "small": BenchSize(arch="resnet18", images=384, score_images=96, train_images=64, synth_images=128,
                       writeup_batch=64, fast_batch=64, score_batch=64),
    # The GPU preset's batches (faceattr.run.config.PRESETS["gpu"]); enough timed steps for a steady rate.
    "full": BenchSize(arch="resnext50_32x4d", images=8192, score_images=8192, train_images=8192, synth_images=512,
                      writeup_batch=64, fast_batch=PRESETS["gpu"]["batch_size"], score_batch=SCORE_BATCH_SIZES["gpu"],
                      train_passes=4),
}
# "tiny": the test suite's smoke run; it measures nothing meaningful.
SIZES["tiny"] = BenchSize(arch="resnet18", images=32, score_images=16, train_images=16, synth_images=16,
                          writeup_batch=8, fast_batch=8, score_batch=8)
SIZE_CHOICES = ("auto", *SIZES)


def run_benchmark(size: str = "auto", device: str | None = None, data_root: str | Path | None = None,
                  *, out=None) -> dict[str, Any]:
    """Measure both recipes; print a text table and one JSON line to `out` (stdout); return the figures.

    `data_root`: a dataset ROOT (ROOT/celeba/...) whose first images are used; default: a
    synthetic set written to a temporary folder (faceattr.synth.files) and removed afterwards.
    """
    out = out if out is not None else sys.stdout
    if size not in SIZE_CHOICES:
        raise ValueError(f"size: {size!r} is not one of {', '.join(SIZE_CHOICES)}")
    device = resolve_device(device)
    if size == "auto":
        size = "full" if device.type == "cuda" else "small"
    spec = SIZES[size]
    if device.type == "cpu":
        torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))

    with tempfile.TemporaryDirectory(prefix="faceattr-bench-") as tmp:
        work = Path(tmp)
        root, image_ids, labels, source = _dataset(work, spec, data_root)
        figures: dict[str, Any] = {
            "size": size,
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "arch": spec.arch,
            "data": source,
            "images": len(image_ids),
            **{f"spec.{key}": value for key, value in asdict(spec).items()},
        }
        figures.update(_cache_figures(work / "run", root, image_ids))
        figures.update(_data_path_figures(work / "run", root, image_ids, labels, spec, device))
        figures.update(_train_figures(work / "run", root, image_ids, labels, spec, device))
        figures.update(_score_figures(work, root, spec, device))
    for part in ("data_path", "train", "score"):
        figures[f"{part}.ratio"] = round(figures[f"{part}.fast_img_s"] / figures[f"{part}.writeup_img_s"], 2)
    print(format_table(figures), file=out)
    print(json.dumps(figures, sort_keys=True), file=out)
    out.flush()
    return figures


def format_table(figures: dict[str, Any]) -> str:
    lines = [
        f"faceattr bench: size {figures['size']}, {figures['device']} ({figures['device_name']}, "
        f"{figures['threads']} CPU threads), {figures['arch']} frozen-6, {figures['images']} images ({figures['data']})",
        f"{'':<22}{'write-up':>12}{'faceattr':>12}{'ratio':>9}",
    ]
    names = {"data_path": "data path (img/s)", "train": "train epoch (img/s)", "score": "score JPEGs (img/s)"}
    for part, name in names.items():
        lines.append(f"{name:<22}{figures[f'{part}.writeup_img_s']:>12.1f}{figures[f'{part}.fast_img_s']:>12.1f}"
                     f"{figures[f'{part}.ratio']:>8.2f}x")
    lines.append(
        f"train batches: write-up {figures['spec.writeup_batch']} fp32 eager; faceattr {figures['spec.fast_batch']}"
        f"{' bf16 channels_last' if figures['device'].startswith('cuda') else ' fp32'}"
        f"{' compiled' if figures['train.fast_compiled'] else ''} (warm-up {figures['train.fast_warmup_s']:.1f} s, "
        "not in the epoch)"
    )
    lines.append(f"train: split to the device {figures['train.fast_upload_s']:.2f} s (not in the epoch)")
    lines.append(f"score: both rates from the second batch; faceattr end to end {figures['score.fast_end_to_end_img_s']:.1f}"
                 f" img/s with {figures['score.fast_fixed_s']:.2f} s of model load, first batch and CSV writing")
    lines.append(f"cache build: {figures['images']} images in {figures['cache.build_s']:.1f} s "
                 f"({figures['cache.build_img_s']:.0f} img/s, once per run)")
    return "\n".join(lines)


# -- data ---------------------------------------------------------------------------------------
def _dataset(work: Path, spec: BenchSize, data_root: str | Path | None):
    """(root, image ids, labels N x 40 int8, description): a given ROOT or a synthetic one."""
    if data_root is not None:
        root = Path(data_root)
        attributes = read_attributes(celeba_dir(root) / ATTR_FILE)
        folder = images_dir(root)
        ids = [i for i in sorted(attributes.index) if (folder / i).is_file()][: spec.images]
        if not ids:
            raise FileNotFoundError(f"{folder}: none of the images listed in {ATTR_FILE} is there")
        return root, ids, attributes.loc[ids].to_numpy(dtype=np.int8), f"{len(ids)} images of {root}"

    generate(work / "source", n=spec.synth_images, seed=0)
    root = work / "root"
    acquire(str(work / "source"), root)
    attributes = read_attributes(celeba_dir(root) / ATTR_FILE)
    folder = images_dir(root)
    base = sorted(attributes.index)
    ids, rows = [], []
    # Copies under new names fill the set up: the same JPEG bytes, decoded as often as the others.
    for k in range(spec.images):
        original = base[k % len(base)]
        image_id = original if k < len(base) else f"{k + 1:06d}c.jpg"
        if image_id != original:
            shutil.copyfile(folder / original, folder / image_id)
        ids.append(image_id)
        rows.append(original)
    labels = attributes.loc[rows].to_numpy(dtype=np.int8)
    return root, ids, labels, f"synthetic, {len(base)} drawn"


def _cache_figures(run_dir: Path, root: Path, image_ids: list[str]) -> dict[str, float]:
    start = time.perf_counter()
    build_split_cache(run_dir, "train", image_ids, root, num_workers=resolve_num_workers(-1))
    seconds = time.perf_counter() - start
    return {"cache.build_s": round(seconds, 3), "cache.build_img_s": round(len(image_ids) / seconds, 1)}


def _writeup_loader(root: Path, image_ids, labels, batch_size: int, device, *, train: bool):
    """The write-up's loader: PIL per image in worker processes (faceattr's reference PIL path)."""
    workers = resolve_num_workers(-1)
    dataset = CelebAImages(images_dir(root), image_ids, labels, train_transform() if train else eval_transform())
    return DataLoader(dataset, batch_size=batch_size, shuffle=train, num_workers=workers,
                      pin_memory=device.type == "cuda", worker_init_fn=worker_init_fn,
                      generator=torch.Generator().manual_seed(0), prefetch_factor=4 if workers else None)


def _fast_loader(run_dir: Path, root: Path, image_ids, labels, batch_size: int, device, *, train: bool):
    array = open_cache(run_dir, "train", _all_ids(run_dir), root)
    if len(image_ids) < len(array):
        array = array[: len(image_ids)]  # the first images: the cache holds the ids in this order
    return CachedLoader(CachedImages(array, image_ids, labels), batch_size=batch_size, train=train, device=device)


def _all_ids(run_dir: Path) -> list[str]:
    return read_json(cache_paths(run_dir, "train")[1])["image_ids"]


def _data_path_figures(run_dir, root, image_ids, labels, spec: BenchSize, device) -> dict[str, float]:
    def one_pass(make_loader) -> float:
        start = time.perf_counter()
        seen = 0
        for images, _ in make_loader():
            images = images.to(device, non_blocking=True)
            seen += images.shape[0]
        synchronize(device)
        return seen / (time.perf_counter() - start)

    writeup = one_pass(lambda: _writeup_loader(root, image_ids, labels, spec.writeup_batch, device, train=True))
    fast = one_pass(lambda: _fast_loader(run_dir, root, image_ids, labels, spec.fast_batch, device, train=True))
    return {"data_path.writeup_img_s": round(writeup, 1), "data_path.fast_img_s": round(fast, 1)}


def _train_figures(run_dir, root, image_ids, labels, spec: BenchSize, device) -> dict[str, Any]:
    ids, rows = image_ids[: spec.train_images], labels[: spec.train_images]
    config = RunConfig(arch=spec.arch, weights="none")
    loss_fn = AttributeLoss("mse").to(device)

    # The write-up: fp32, contiguous, eager, batch 64, the PIL loader, cuDNN without autotuning.
    torch.backends.cudnn.benchmark = False
    torch.manual_seed(0)
    model = build_model(spec.arch, weights="none").to(device)
    optimizer = make_optimizer(model, config)

    def writeup_step(images, targets):
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        loss = loss_fn(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train()
    # One warm-up step each (cuDNN autotuning, allocations); a small one on the CPU, where a full
    # batch costs many seconds and there is nothing to tune.
    warm_batch = spec.writeup_batch if device.type == "cuda" else min(spec.writeup_batch, 8)
    warm = torch.randn(warm_batch, 3, 218, 178, device=device)
    writeup_step(warm, torch.ones(warm_batch, 40, device=device))
    # The loader is built and its first batch fetched before the clock starts (worker start-up),
    # as faceattr's loader below is built before its clock starts.
    batches = iter(_writeup_loader(root, ids, rows, spec.writeup_batch, device, train=True))
    first = next(batches)
    synchronize(device)
    start = time.perf_counter()
    seen = 0
    for images, targets in itertools.chain([first], batches):
        writeup_step(images, targets)
        seen += images.shape[0]
    synchronize(device)
    writeup = seen / (time.perf_counter() - start)
    del model, optimizer, first, batches

    prepare_cuda(device)  # cuDNN autotuning, as faceattr.engine.train sets it
    # faceattr: the product's own training loop on the cache path. The loader is made first (on
    # CUDA it puts the split on the device: once per epoch task, reported apart), the model is
    # warmed up (compile, cuDNN's autotuning), then the same loader is timed: the steady loop.
    torch.manual_seed(0)
    model = build_model(spec.arch, weights="none").to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, config)
    compiled = should_compile(None, device)
    runner = torch.compile(model) if compiled else model
    start = time.perf_counter()
    loader = _fast_loader(run_dir, root, ids, rows, spec.fast_batch, device, train=True)
    synchronize(device)
    upload_s = time.perf_counter() - start
    start = time.perf_counter()
    # Compiling needs two full steps (the first compiles, the second checks the guards).
    warm_count = min(len(ids), 2 * spec.fast_batch if compiled else warm_batch)
    warm_loader = _fast_loader(run_dir, root, ids[:warm_count], rows[:warm_count], spec.fast_batch, device, train=True)
    train_one_epoch(runner, warm_loader, loss_fn, optimizer, device, desc="bench warm-up", log_every_s=1e9)
    synchronize(device)
    warmup_s = time.perf_counter() - start

    def steady() -> float:
        synchronize(device)
        start, seen = time.perf_counter(), 0
        for _ in range(spec.train_passes):
            seen += train_one_epoch(runner, loader, loss_fn, optimizer, device, desc="bench train",
                                    log_every_s=1e9)["images"]
        synchronize(device)
        return seen / (time.perf_counter() - start)

    figures = {"train.writeup_img_s": round(writeup, 1), "train.fast_img_s": round(steady(), 1),
               "train.fast_compiled": compiled, "train.fast_warmup_s": round(warmup_s, 2),
               "train.fast_upload_s": round(upload_s, 3)}
    # What cuDNN's autotuning is worth is measured by benchmarks/gpu_check.py, each setting in a
    # fresh process: cuDNN's plan cache is not keyed by the flag, so one process cannot compare them.
    return figures


def _score_figures(work: Path, root: Path, spec: BenchSize, device) -> dict[str, float]:

    # A folder of the first score_images files, as a user would hand to 'faceattr predict'.
    folder = work / "score"
    folder.mkdir()
    for name in list_folder(images_dir(root))[: spec.score_images]:
        os.link(images_dir(root) / name, folder / name)
    files = list_folder(folder)
    torch.manual_seed(0)
    model = build_model(spec.arch, weights="none").eval()
    model_path = export_model(work / "model.pt", model.state_dict(), RunConfig(arch=spec.arch, weights="none"),
                              epoch=1, thresholds=np.zeros(40, np.float32), run="bench", val_mean_accuracy=0.0)

    # The write-up: PIL decode in workers, fp32, batch 64; timed from its second batch, as
    # predict's steady rate below (loader start and the first batch are fixed costs on both sides).
    model = model.to(device)
    workers = resolve_num_workers(-1)
    with torch.inference_mode():
        model(torch.randn(spec.writeup_batch, 3, 218, 178, device=device))
        synchronize(device)
        writeup_start = time.perf_counter()
        loader = torch.utils.data.DataLoader(
            CelebAImages(folder, files, None, eval_transform()), batch_size=spec.writeup_batch,
            num_workers=workers, pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None)
        steady_start, seen = None, 0
        for images, _ in loader:
            model(images.to(device, non_blocking=True)).float().cpu()  # .cpu() waits for the device
            if steady_start is None:
                steady_start = time.perf_counter()
            else:
                seen += images.shape[0]
        writeup_end = time.perf_counter()
    del model

    # faceattr: the product's predict on the same folder (a first call warms up CUDA and cuDNN).
    if device.type == "cuda":
        predict(model_path, folder, work / "warm.csv", batch_size=spec.score_batch, device=str(device))
    start = time.perf_counter()
    timings: dict[str, Any] = {}
    result = predict(model_path, folder, work / "scores.csv", batch_size=spec.score_batch, device=str(device),
                     timings=timings)
    end_to_end = result["rows"] / (time.perf_counter() - start)
    if result["errors"]:
        raise RuntimeError(f"bench: predict could not read {result['errors']} image(s); see {result['errors_csv']}")
    # Both from the second batch on (one batch only: end to end on both sides); model load,
    # worker start, the first batch and CSV writing are predict's fixed cost, reported apart.
    single = seen == 0 or not timings["steady_images_per_second"]
    writeup = len(files) / (writeup_end - writeup_start) if single else seen / (writeup_end - steady_start)
    fast = end_to_end if single else timings["steady_images_per_second"]
    return {"score.writeup_img_s": round(writeup, 1), "score.fast_img_s": round(fast, 1),
            "score.fast_end_to_end_img_s": round(end_to_end, 1),
            "score.fast_fixed_s": round(timings["load_s"] + timings["first_batch_s"] + timings["write_s"], 3)}
