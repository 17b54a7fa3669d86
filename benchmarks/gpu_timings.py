"""The GPU check's timing sections (benchmarks/gpu_check.py: each runs in a process of its own) and
the projection of a 12-epoch full-CelebA run from what they measured.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpu_common import BLOCKER, REPO, Sizes, rounded, run_process
from gpu_sections import _jpeg_folder, _model_file, _predict, _training_setup
from faceattr.attributes import ATTRIBUTES
from faceattr.data.cache import upload
from faceattr.data.download import acquire
from faceattr.data.labels import read_attributes
from faceattr.fsutil import read_json
from faceattr.run.layout import RunLayout
from faceattr.runtime import synchronize
from faceattr.synth.files import generate


def pipeline_section(ctx: dict) -> dict:
    """The DAG's tasks as separate `faceattr` processes on a synthetic set; epoch 1 with a cold compile cache."""
    sizes, work = ctx["sizes"], ctx["work"]
    start = time.perf_counter()
    generate(work / "source", n=sizes.pipeline_images, seed=0)
    acquire(str(work / "source"), work / "root")
    result: dict[str, Any] = {"images": sizes.pipeline_images, "dataset_s": round(time.perf_counter() - start, 2),
                              "compile_cache": "cold for epoch 1 (a new FACEATTR_HOME)", "tasks": {}}
    run = work / "run"
    steps = [
        ("split", ["split", "--root", str(work / "root"), "--out", str(run), "--arch", sizes.arch, "--weights", "none",
                   "--freeze-children", "6", "--batch-size", str(sizes.batch), "--epochs", "2",
                   "--data-path", "cache", "--device", str(ctx["device"].type)]),
        ("cache", ["cache", "--run", str(run)]),
        ("train_epoch_1", ["train", "--run", str(run), "--epoch", "1"]),
        ("train_epoch_2", ["train", "--run", str(run), "--epoch", "2"]),
        ("validate_epoch_1", ["evaluate", "--run", str(run), "--epoch", "1", "--split", "val"]),
        ("validate_epoch_2", ["evaluate", "--run", str(run), "--epoch", "2", "--split", "val"]),
        ("select", ["select", "--run", str(run)]),
        ("test", ["evaluate", "--run", str(run), "--epoch", "best", "--split", "test"]),
    ]
    launcher = work / "faceattr_blocked.py"
    launcher.write_text(BLOCKER + "\nfrom faceattr.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    for name, argv in steps:
        done = run_process([sys.executable, str(launcher), *argv], ctx, timeout=400)
        task = {"wall_s": done["seconds"], "rc": done["rc"]}
        if done["rc"] != 0:
            result["tasks"][name] = {**task, "error": done["stderr_tail"]}
            result["failed_at"] = name
            break
        if name.startswith("train_epoch_"):
            metrics = read_json(RunLayout(run).metrics("train", int(name[-1])))
            task["metrics"] = {k: rounded(v) for k, v in metrics.items() if k not in ("epoch", "split")}
            loop = metrics.get("loop_s")
            if isinstance(loop, (int, float)):
                task["fixed_s"] = round(done["seconds"] - loop, 2)  # the process's wall time but the loop
        result["tasks"][name] = task
    return result


def steady_loop_section(ctx: dict) -> dict:
    """train_one_epoch on a device-resident cache, after the compile warm-up, cuDNN autotuning off
    and on, each in a fresh process: cuDNN v8 looks its plan cache up before the benchmark flag and
    does not key it by the flag, so a second setting in the same process would reuse the first's plans."""
    launcher = ctx["work"] / "steady_blocked.py"
    launcher.write_text(BLOCKER + f"\nimport json\nsys.path.insert(0, {str(REPO / 'benchmarks')!r})\n"
                        "from gpu_timings import steady_rate\n"
                        "print(json.dumps(steady_rate(sys.argv[1], sys.argv[2] == 'dry', sys.argv[3] == 'on')))\n")
    result: dict[str, Any] = {"images_per_second": {}}
    for setting in ("off", "on"):
        done = run_process([sys.executable, str(launcher), str(ctx["work"]), "dry" if ctx["sizes"].dry_run else "gpu", setting],
                    ctx, timeout=300)
        key = f"cudnn_benchmark_{setting}"
        if done["rc"] != 0:
            return {**result, "error": f"{key}: rc {done['rc']}: {done['stderr_tail']}"}
        figures = json.loads(done["stdout_tail"].splitlines()[-1])
        result["images_per_second"][key] = figures.pop("images_per_second")
        result[f"warmup_s_{setting}"] = figures.pop("warmup_s")
        result.update(figures)  # arch, batch, compiled, ...: the same in both
    return result


def steady_rate(work: str, dry_run: bool, benchmark: bool) -> dict:
    """steady_loop_section's measurement in this (fresh) process, with cudnn.benchmark = `benchmark`."""
    torch.backends.cudnn.benchmark = benchmark  # before any convolution has run in this process
    sizes = Sizes(dry_run)
    device = torch.device("cpu" if dry_run else "cuda")
    loop = _training_setup({"device": device, "sizes": sizes, "work": Path(work)}, sizes.steady_images)
    start = time.perf_counter()
    loop["epoch"](loop["loader"])  # the first pass compiles
    loop["epoch"](loop["loader"])  # and a second: cuDNN's choices made
    synchronize(device)
    warmup_s = time.perf_counter() - start
    start, images = time.perf_counter(), 0
    for _ in range(sizes.steady_passes):
        images += loop["epoch"](loop["loader"])["images"]
    synchronize(device)
    return {"arch": sizes.arch, "batch": sizes.batch, "compiled": loop["compiled"], "resident": loop["loader"].resident,
            "upload_gb_s": loop["upload_gb_s"], "warmup_s": round(warmup_s, 2),
            "steps_timed": sizes.steady_passes * len(loop["loader"]),
            "images_per_second": round(images / (time.perf_counter() - start), 1)}


def scoring_section(ctx: dict) -> dict:
    """predict at two set sizes: (files, wall seconds) pairs give the rate and the fixed cost apart."""
    sizes, device = ctx["sizes"], ctx["device"]
    model_file = _model_file(ctx)
    start = time.perf_counter()
    _predict(model_file, _jpeg_folder(ctx, sizes.score_batch), ctx["work"] / "warm.csv", ctx)  # CUDA and cuDNN start
    result: dict[str, Any] = {"arch": sizes.arch, "batch": sizes.score_batch, "device": str(device),
                              "first_call_s": round(time.perf_counter() - start, 2), "runs": {}}
    walls = {}
    for n in sizes.score_sizes:
        folder = _jpeg_folder(ctx, n)
        start = time.perf_counter()
        counts, timings = _predict(model_file, folder, ctx["work"] / f"scores-{n}.csv", ctx)
        walls[n] = time.perf_counter() - start
        result["runs"][str(n)] = {"wall_s": round(walls[n], 3), "rows": counts["rows"], "errors": counts["errors"],
                                  **{k: rounded(v) for k, v in timings.items()}}
    small, large = sizes.score_sizes
    rate = (large - small) / (walls[large] - walls[small]) if walls[large] > walls[small] else None
    if rate:
        fixed = walls[small] - small / rate
        result.update({"rate_img_s": round(rate, 1), "fixed_s": round(fixed, 3),
                       "end_to_end_200k_img_s": round(200_000 / (fixed + 200_000 / rate), 1)})
    return result


def fixed_cost_section(ctx: dict) -> dict:
    """What an epoch task pays before its loop at CelebA's train size (162,770 images; scaled down in a
    dry run): parsing a label file of that many rows, and uploading a cache of that many images to
    the device. The synthetic cache (random-looking pixels, 19 GB at full size) is held in memory, as
    a cache file's pages are in the page cache for every epoch task after the first; writing it to
    disk would cost this section's time and the device's disk for nothing the task pays."""
    n, work = ctx["sizes"].full_train_images, ctx["work"]
    rng = np.random.default_rng(0)
    chunk = rng.integers(0, 256, (1024, 218, 178, 3), dtype=np.uint8)
    start = time.perf_counter()
    array = np.empty((n, 218, 178, 3), dtype=np.uint8)
    for k in range(0, n, len(chunk)):
        array[k:k + len(chunk)] = chunk[: min(len(chunk), n - k)]
    fill_s = time.perf_counter() - start

    labels = work / "list_attr_celeba.txt"
    values = np.where(rng.random((n, len(ATTRIBUTES))) < 0.3, " 1", "-1")
    with open(labels, "w") as handle:
        handle.write(f"{n}\n{' '.join(ATTRIBUTES)}\n")
        handle.writelines(f"{i + 1:06d}.jpg " + " ".join(row) + "\n" for i, row in enumerate(values))
    start = time.perf_counter()
    frame = read_attributes(labels)
    labels_parse_s = time.perf_counter() - start

    device = ctx["device"]
    start = time.perf_counter()
    on_device = upload(array, device)
    synchronize(device)
    upload_s = time.perf_counter() - start
    del on_device
    return {"images": n, "bytes": array.nbytes, "rows_parsed": len(frame), "cache_fill_s": round(fill_s, 2),
            "labels_parse_s": round(labels_parse_s, 3), "upload_s": round(upload_s, 3),
            "upload_gb_s": round(array.nbytes / 1e9 / upload_s, 2) if upload_s > 0 else None,
            "source": "host memory (as a warm page cache)"}
