"""The GPU check's correctness sections (benchmarks/gpu_check.py: each runs in a process of its own):
each takes the check's context (device, sizes, work folder, deadline) and returns its figures as a
JSON-able dict. The timing sections are in gpu_timings.py.
"""
from __future__ import annotations

import io
import os
import sys
import time
import warnings
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from gpu_common import BLOCKED, BLOCKER, REPO, line, run_process, short
from faceattr.attributes import ATTRIBUTES
from faceattr.data.images import IMAGE_SIZE, MEAN, STD
from faceattr.data.jpeg import JpegDecoder, RawJpegs, plain_jpeg
from faceattr.data.loaders import CachedImages, CachedLoader
from faceattr.data.transforms import eval_transform
from faceattr.engine.predict import predict
from faceattr.engine.train import AttributeLoss, make_optimizer, train_one_epoch
from faceattr.model import build_model, export_model
from faceattr.run.config import RunConfig
from faceattr.runtime import should_compile, synchronize, use_compile_cache

LIBRARY = ("faceattr.cli", "faceattr.data.cache", "faceattr.data.split", "faceattr.data.download",
           "faceattr.synth.files", "faceattr.engine.train", "faceattr.engine.distributed", "faceattr.engine.evaluate",
           "faceattr.engine.inference", "faceattr.engine.metrics", "faceattr.engine.selection",
           "faceattr.engine.predict", "faceattr.bench")


def env_section(ctx: dict) -> dict:
    device = ctx["device"]
    return {
        "python": sys.version.split()[0], "torch": torch.__version__, "torchvision": torchvision.__version__,
        "device": str(device), "cuda_available": torch.cuda.is_available(),
        "device_name": torch.cuda.get_device_name(device) if torch.cuda.is_available() and device.type == "cuda"
        else "cpu",
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cpu_count": os.cpu_count(),
    }


def imports_section(ctx: dict) -> dict:
    code = BLOCKER + "\nimport importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in LIBRARY)
    done = run_process([sys.executable, "-c", code], ctx, timeout=300)
    return {"modules": list(LIBRARY), "blocked": list(BLOCKED), "ok": done["rc"] == 0,
            **({} if done["rc"] == 0 else {"error": done["stderr_tail"]})}


def nvjpeg_section(ctx: dict) -> dict:
    """How decode_jpeg on the device and faceattr's JpegDecoder treat awkward files (vs PIL's pixels)."""
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
                result["alone"] = {"ok": False, "error": line(exc)}
            try:
                reference = torch.from_numpy(np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))).permute(2, 0, 1)
                result["pil"] = "ok"
            except Exception as exc:  # noqa: BLE001
                result["pil"], reference = line(exc), None
            if result["alone"]["ok"] and reference is not None and tuple(reference.shape) == tuple(image.shape):
                difference = (image.cpu().int() - reference.int()).abs()
                result["alone"].update({"max_abs_diff_vs_pil": int(difference.max()),
                                        "mean_abs_diff_vs_pil": round(float(difference.float().mean()), 3)})
            try:
                decode_jpeg([torch.frombuffer(bytearray(good), dtype=torch.uint8), tensor], mode=ImageReadMode.RGB,
                            device=device)
                result["in_a_batch_with_a_good_one"] = {"ok": True}
            except Exception as exc:  # noqa: BLE001
                result["in_a_batch_with_a_good_one"] = {"ok": False, "error": line(exc)}
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
    files = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").rglob("test_*.py")
                   if "mark.cuda" in p.read_text(errors="replace"))
    report = ctx["work"] / "cuda-tests.xml"
    env = {"FACEATTR_REQUIRE_CUDA": "0" if ctx["sizes"].dry_run else "1"}
    done = run_process([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", f"--junitxml={report}",
                 *files], ctx, timeout=400, env=env)
    result: dict[str, Any] = {"files": files, "require_cuda": env["FACEATTR_REQUIRE_CUDA"] == "1", "rc": done["rc"]}
    if not report.is_file():
        return {**result, "error": done["stderr_tail"] or done["stdout_tail"]}
    suite = ET.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    result.update({key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")})
    result["problems"] = {case.get("name"): line(child.get("message") or child.text or child.tag)
                          for case in suite.iter("testcase") for child in case
                          if child.tag in ("failure", "error")}
    return result


def sync_sites_section(ctx: dict) -> dict:
    """Every host-device sync in the warm training loop and in scoring, by the source line that asked for it."""
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
        sites = Counter(f"{short(w.filename)}:{w.lineno}" for w in caught if "synchroniz" in str(w.message))
        result[name] = dict(sites.most_common())
    return result


# -- helpers ------------------------------------------------------------------------------------
def _training_setup(ctx: dict, n: int) -> dict:
    """A model, optimizer and device-resident cache loader as faceattr.engine.train builds them, on random pixels."""
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
    rng = np.random.default_rng(seed)
    width, height = size
    base = np.linspace(0, 255, width * height * 3).reshape(height, width, 3)
    return ((base + rng.integers(0, 60, (height, width, 3))) % 256).astype(np.uint8)


def _jpeg(pixels, mode: str = "RGB") -> bytes:
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
    path = ctx["work"] / "model.pt"
    if not path.is_file():
        torch.manual_seed(0)
        model = build_model(ctx["sizes"].arch, "none", 6)
        export_model(path, model.state_dict(), RunConfig(arch=ctx["sizes"].arch, weights="none"), epoch=1,
                     thresholds=np.zeros(40, np.float32), run="gpu-check", val_mean_accuracy=0.0)
    return path


def _predict(model_file: Path, folder: Path, out: Path, ctx: dict) -> tuple[dict, dict]:
    timings: dict[str, Any] = {}
    counts = predict(model_file, folder, out, batch_size=ctx["sizes"].score_batch, device=str(ctx["device"]),
                     timings=timings)
    return counts, timings
