"""The sections of benchmarks/gpu_check.py (see its docstring): each takes the check's context
(device, sizes, work folder, deadline) and returns its figures as a JSON-able dict.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
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
LIBRARY = ("faceattr.cli", "faceattr.data.cache", "faceattr.data.split", "faceattr.data.download",
           "faceattr.synth.files", "faceattr.engine.train", "faceattr.engine.distributed", "faceattr.engine.evaluate",
           "faceattr.engine.selection", "faceattr.engine.predict", "faceattr.bench")


class Sizes:
    def __init__(self, dry_run: bool):
        from faceattr.run.config import PRESETS, SCORE_BATCH_SIZES

        self.dry_run = dry_run
        if dry_run:  # the same code paths, small enough for two CPU cores
            self.arch, self.batch, self.score_batch = "resnet18", 8, 8
            self.pipeline_images, self.steady_images, self.steady_passes = 40, 16, 1
            self.score_sizes, self.sync_images = (8, 24), 16
        else:  # the GPU preset's setting: ResNeXt50_32x4d, first 6 children frozen, its batches
            self.arch, self.batch, self.score_batch = "resnext50_32x4d", PRESETS["gpu"]["batch_size"], SCORE_BATCH_SIZES["gpu"]
            self.pipeline_images, self.steady_images, self.steady_passes = 1500, 16 * self.batch, 3
            self.score_sizes, self.sync_images = (2048, 16384), 4 * self.batch


# -- the sections ---------------------------------------------------------------------------------
def env_section(ctx: dict) -> dict:
    import torch
    import torchvision

    device = ctx["device"]
    return {
        "python": sys.version.split()[0], "torch": torch.__version__, "torchvision": torchvision.__version__,
        "device": str(device), "cuda_available": torch.cuda.is_available(),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cpu_count": os.cpu_count(),
    }


def imports_section(ctx: dict) -> dict:
    code = BLOCKER + "\nimport importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in LIBRARY)
    done = _run([sys.executable, "-c", code], ctx, timeout=300)
    return {"modules": list(LIBRARY), "blocked": list(BLOCKED), "ok": done["rc"] == 0,
            **({} if done["rc"] == 0 else {"error": done["stderr_tail"]})}


def nvjpeg_section(ctx: dict) -> dict:
    """How decode_jpeg on the device and faceattr's JpegDecoder treat awkward files (vs PIL's pixels)."""
    import io

    import numpy as np
    import torch
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_jpeg

    from faceattr.data.images import IMAGE_SIZE, MEAN, STD
    from faceattr.data.jpeg import JpegDecoder, RawJpegs, plain_jpeg
    from faceattr.data.transforms import eval_transform

    device = ctx["device"]
    good = _jpeg(_pixels(0))
    gray = _jpeg(_pixels(1), mode="L")
    odd = _jpeg(_pixels(2, size=(177, 219)))  # odd width and height, 4:2:0 chroma
    scan = good.index(b"\xff\xda")
    flipped = bytearray(good)
    for k in range(scan + 400, len(good) - 400, 97):
        flipped[k] ^= 0x5A
    cases = {
        "good": good, "gray": gray, "odd_size": odd,
        "corrupt_truncated": good[: len(good) // 2],  # no end marker
        "corrupt_cut_with_end_marker": good[: scan + 300] + b"\xff\xd9",
        "corrupt_bit_flips": bytes(flipped),
    }
    results = {}
    for name, data in cases.items():
        tensor = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        result: dict[str, Any] = {"bytes": len(data), "plain_jpeg": plain_jpeg(data)}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                image = decode_jpeg(tensor, mode=ImageReadMode.RGB, device=device)
                result["alone"] = {"ok": True, "shape": list(image.shape)}
            except Exception as exc:  # noqa: BLE001 - what the decoder says is the finding
                result["alone"] = {"ok": False, "error": _line(exc)}
            try:
                reference = torch.from_numpy(np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))).permute(2, 0, 1)
                result["pil"] = "ok"
            except Exception as exc:  # noqa: BLE001
                result["pil"], reference = _line(exc), None
            if result["alone"]["ok"] and reference is not None and tuple(reference.shape) == tuple(image.shape):
                difference = (image.cpu().int() - reference.int()).abs()
                result["alone"].update({"max_abs_diff_vs_pil": int(difference.max()),
                                        "mean_abs_diff_vs_pil": round(float(difference.float().mean()), 3)})
            try:
                decode_jpeg([torch.frombuffer(bytearray(good), dtype=torch.uint8), tensor], mode=ImageReadMode.RGB,
                            device=device)
                result["in_a_batch_with_a_good_one"] = {"ok": True}
            except Exception as exc:  # noqa: BLE001
                result["in_a_batch_with_a_good_one"] = {"ok": False, "error": _line(exc)}
        decoder = JpegDecoder(device, IMAGE_SIZE, MEAN, STD, eval_transform())
        on_device = decoder._on_device(RawJpegs.pack([0, 1], [good, data]).files())
        _, batch, errors = decoder.decode(RawJpegs.pack([0, 1], [good, data]))
        result["faceattr"] = {
            "decoded_on_device": on_device[1] is not None,
            "outcome": "error: " + dict(errors)[1] if 1 in dict(errors) else "row",
            "device_decoding_still_on": decoder.enabled, "batch_shape": list(batch.shape),
        }
        results[name] = result
    return {"device": str(device), "files": results}


def cuda_tests_section(ctx: dict) -> dict:
    """pytest on the tests marked `cuda`; FACEATTR_REQUIRE_CUDA=1 except in a dry run (they skip there)."""
    import xml.etree.ElementTree as ET

    files = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").rglob("test_*.py")
                   if "mark.cuda" in p.read_text(errors="replace"))
    report = ctx["work"] / "cuda-tests.xml"
    env = {"FACEATTR_REQUIRE_CUDA": "0" if ctx["sizes"].dry_run else "1"}
    done = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", f"--junitxml={report}",
                 *files], ctx, timeout=400, env=env)
    result: dict[str, Any] = {"files": files, "require_cuda": env["FACEATTR_REQUIRE_CUDA"] == "1", "rc": done["rc"]}
    if not report.is_file():
        return {**result, "error": done["stderr_tail"] or done["stdout_tail"]}
    suite = ET.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    result.update({key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")})
    result["problems"] = {case.get("name"): _line(child.get("message") or child.text or child.tag)
                          for case in suite.iter("testcase") for child in case
                          if child.tag in ("failure", "error")}
    return result


def pipeline_section(ctx: dict) -> dict:
    """The DAG's tasks as separate `faceattr` processes on a synthetic set; epoch 1 with a cold compile cache."""
    from faceattr.data.download import acquire
    from faceattr.fsutil import read_json
    from faceattr.run.layout import RunLayout
    from faceattr.synth.files import generate

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
        done = _run([sys.executable, str(launcher), *argv], ctx, timeout=400)
        task = {"wall_s": done["seconds"], "rc": done["rc"]}
        if done["rc"] != 0:
            result["tasks"][name] = {**task, "error": done["stderr_tail"]}
            result["failed_at"] = name
            break
        if name.startswith("train_epoch_"):
            metrics = read_json(RunLayout(run).metrics("train", int(name[-1])))
            task["metrics"] = {k: _round(v) for k, v in metrics.items() if k not in ("epoch", "split")}
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
                        "from gpu_sections import steady_rate\n"
                        "print(json.dumps(steady_rate(sys.argv[1], sys.argv[2] == 'dry', sys.argv[3] == 'on')))\n")
    result: dict[str, Any] = {"images_per_second": {}}
    for setting in ("off", "on"):
        done = _run([sys.executable, str(launcher), str(ctx["work"]), "dry" if ctx["sizes"].dry_run else "gpu", setting],
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
    import torch

    from faceattr.runtime import synchronize

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


def sync_sites_section(ctx: dict) -> dict:
    """Every host-device sync in the warm training loop and in scoring, by the source line that asked for it."""
    import torch

    from faceattr.data.loaders import CachedLoader
    from faceattr.runtime import synchronize

    device = ctx["device"]
    if device.type != "cuda":
        return {"skipped": "torch.cuda.set_sync_debug_mode needs CUDA"}
    loop = _training_setup(ctx, ctx["sizes"].sync_images)
    loop["epoch"](loop["loader"])  # warm, outside the watch
    streamed = CachedLoader(loop["loader"].dataset, batch_size=ctx["sizes"].batch, train=True, device=device,
                            seed=1, resident=False)
    folder = _jpeg_folder(ctx, ctx["sizes"].score_batch * 2)
    model_file = _model_file(ctx)
    phases = {
        "train_resident": lambda: loop["epoch"](loop["loader"]),
        "train_streamed": lambda: loop["epoch"](streamed),
        "score": lambda: _predict(model_file, folder, ctx["work"] / "sync.csv", ctx),
    }
    result = {}
    for name, phase in phases.items():
        phase()  # once unwatched: allocations and cuDNN's first choices are not the steady state
        synchronize(device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                phase()
                synchronize(device)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        sites = Counter(f"{_short(w.filename)}:{w.lineno}" for w in caught if "synchroniz" in str(w.message))
        result[name] = dict(sites.most_common())
    return result


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
                                  **{k: _round(v) for k, v in timings.items()}}
    small, large = sizes.score_sizes
    rate = (large - small) / (walls[large] - walls[small]) if walls[large] > walls[small] else None
    if rate:
        fixed = walls[small] - small / rate
        result.update({"rate_img_s": round(rate, 1), "fixed_s": round(fixed, 3),
                       "end_to_end_200k_img_s": round(200_000 / (fixed + 200_000 / rate), 1)})
    return result


# -- helpers ------------------------------------------------------------------------------------
def _training_setup(ctx: dict, n: int) -> dict:
    """A model, optimizer and device-resident cache loader as faceattr.engine.train builds them, on random pixels."""
    import numpy as np
    import torch

    from faceattr.attributes import ATTRIBUTES
    from faceattr.run.config import RunConfig
    from faceattr.data.loaders import CachedImages, CachedLoader
    from faceattr.engine.train import AttributeLoss, make_optimizer, train_one_epoch
    from faceattr.model import build_model
    from faceattr.runtime import should_compile, synchronize, use_compile_cache

    sizes, device = ctx["sizes"], ctx["device"]
    torch.manual_seed(0)
    model = build_model(sizes.arch, "none", 6).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, RunConfig(arch=sizes.arch, weights="none"))
    loss_fn = AttributeLoss("mse").to(device)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (n, 218, 178, 3), dtype=np.uint8)
    labels = np.where(rng.random((n, len(ATTRIBUTES))) < 0.3, 1, -1).astype(np.int8)
    start = time.perf_counter()
    loader = CachedLoader(CachedImages(pixels, [f"{i:06d}.jpg" for i in range(n)], labels), batch_size=sizes.batch,
                          train=True, device=device, seed=0)
    synchronize(device)
    upload_s = time.perf_counter() - start  # the whole split onto the device, when it is resident
    compiled = should_compile(None, device)
    if compiled:
        use_compile_cache(ctx["work"] / "home")  # the pipeline's cache: what a run's later tasks see
    runner = torch.compile(model) if compiled else model

    def epoch(loader) -> dict:
        return train_one_epoch(runner, loader, loss_fn, optimizer, device, log_every_s=1e9)

    return {"epoch": epoch, "loader": loader, "compiled": compiled,
            "upload_gb_s": round(pixels.nbytes / 1e9 / upload_s, 2) if loader.resident else None}


def _pixels(seed: int, size: tuple[int, int] = (178, 218)):
    import numpy as np

    rng = np.random.default_rng(seed)
    width, height = size
    base = np.linspace(0, 255, width * height * 3).reshape(height, width, 3)
    return ((base + rng.integers(0, 60, (height, width, 3))) % 256).astype(np.uint8)


def _jpeg(pixels, mode: str = "RGB") -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _jpeg_folder(ctx: dict, n: int) -> Path:
    """A folder of n JPEG files: hard links to 256 distinct ones (each file is still read and decoded)."""
    folder = ctx["work"] / f"jpegs-{n}"
    if folder.is_dir():
        return folder
    distinct = ctx["work"] / "jpegs-distinct"
    if not distinct.is_dir():
        distinct.mkdir()
        for i in range(256):
            (distinct / f"{i:03d}.jpg").write_bytes(_jpeg(_pixels(1000 + i)))
    folder.mkdir()
    for i in range(n):
        os.link(distinct / f"{i % 256:03d}.jpg", folder / f"{i:06d}.jpg")
    return folder


def _model_file(ctx: dict) -> Path:
    import numpy as np
    import torch

    from faceattr.run.config import RunConfig
    from faceattr.model import build_model, export_model

    path = ctx["work"] / "model.pt"
    if not path.is_file():
        torch.manual_seed(0)
        model = build_model(ctx["sizes"].arch, "none", 6)
        export_model(path, model.state_dict(), RunConfig(arch=ctx["sizes"].arch, weights="none"), epoch=1,
                     thresholds=np.zeros(40, np.float32), run="gpu-check", val_mean_accuracy=0.0)
    return path


def _predict(model_file: Path, folder: Path, out: Path, ctx: dict) -> tuple[dict, dict]:
    from faceattr.engine.predict import predict

    timings: dict[str, Any] = {}
    counts = predict(model_file, folder, out, batch_size=ctx["sizes"].score_batch, device=str(ctx["device"]),
                     timings=timings)
    return counts, timings


def _run(command: list[str], ctx: dict, *, timeout: float, env: dict | None = None) -> dict:
    """Run a process with PYTHONPATH=repo and this check's FACEATTR_HOME; rc, seconds and output tails.

    TORCHINDUCTOR_CACHE_DIR is not passed on (this process may have set it, use_compile_cache): the
    child finds the compile cache under its FACEATTR_HOME, so the pipeline's epoch 1 starts cold."""
    if ctx.get("deadline"):  # a hung process must not take the rest of the budget with it
        timeout = max(30.0, min(timeout, ctx["deadline"] - time.perf_counter()))
    inherited = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    full_env = {**inherited, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                "FACEATTR_HOME": str(ctx["work"] / "home"), "FACEATTR_WORLD_SIZE": "1", **(env or {})}
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=REPO)
    except subprocess.TimeoutExpired as exc:
        return {"rc": None, "seconds": round(time.perf_counter() - start, 2), "stdout_tail": "",
                "stderr_tail": f"timed out after {timeout} s: {_tail(exc.stderr)}"}
    return {"rc": done.returncode, "seconds": round(time.perf_counter() - start, 2),
            "stdout_tail": _tail(done.stdout), "stderr_tail": _tail(done.stderr)}


def _tail(text, lines: int = 12) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return "\n".join((text or "").strip().splitlines()[-lines:])


def _line(value) -> str:
    return (str(value).strip().splitlines() or [type(value).__name__])[0][:300]


def _short(filename: str) -> str:
    path = Path(filename)
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else "/".join(path.parts[-3:])


def _round(value):
    return round(value, 4) if isinstance(value, float) else value
