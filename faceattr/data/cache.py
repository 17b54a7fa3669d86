"""Decode once: each split's images as one memory-mapped uint8 array in RUN/cache/.

The write-up's loader decodes and resizes every JPEG again in every epoch, which costs more CPU
than a modern GPU's training step. `build_cache(run)` decodes the images of the run's split once
into

    RUN/cache/{split}.npy   N x 218 x 178 x 3 uint8 (NHWC, RGB), a plain .npy file
    RUN/cache/{split}.json  the index: image ids in split.csv order, shape, a hash of the split

and the fast data path (faceattr.data.loaders, data_path "cache") reads batches straight out of the
memory map. The pixels are exactly what the evaluation transform sees before ToTensor: the image
opened with faceattr.data.images.open_image (EXIF-transposed, RGB) and, when its size is not
178x218, resized to it. Training augments from these pixels, so for such images the training
resize is applied to the already-resized image (CelebA's aligned images are all 178x218).

Rules:
- Streaming: images are decoded by DataLoader workers in chunks of CHUNK_IMAGES and each chunk is
  appended to the file with a plain write, so the builder's memory is bounded by
  (workers x prefetch + 1) chunks whatever the dataset size (about 0.5 GB with 8 workers), and
  the page cache, not the process, holds the file.
- Atomic: the .npy is written under a temporary name and renamed; the .json is written (also
  atomically) only after that. A cache counts as complete only when its .json exists, matches
  the current split and dataset root, and the .npy has exactly the size it records. Anything
  else (a leftover temporary file, an .npy without index, an index for another split) is
  never read and is rebuilt.
- Idempotent: a complete cache is kept as it is.

In the training DAG it is a task of its own after the split (`faceattr cache --run RUN`, i.e.
build_cache(run_dir)); with data_path "cache" a missing split is also built on first use. The
index does not fingerprint the image bytes: after replacing images under the same names, delete
RUN/cache/ (or start a new run).
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from faceattr.attributes import SPLITS
from faceattr.data.images import IMAGE_SIZE, open_image
from faceattr.data.layout import IMAGES_DIR
from faceattr.data.split import read_split
from faceattr.data.versions import run_dataset_dir
from faceattr.data.transforms import ResizeIfNeeded
from faceattr.fsutil import atomic_path, read_json, write_json
from faceattr.run.config import RunConfig
from faceattr.run.layout import RunLayout
from faceattr.runtime import resolve_num_workers

log = logging.getLogger(__name__)

CHUNK_IMAGES = 256  # images decoded, held and written at a time (~30 MB at 178x218)
FORMAT_VERSION = 1


class CacheError(ValueError):
    """A cache file is missing, partial or does not match the run; the message names the file."""


# -- paths and identity -----------------------------------------------------------------------
def cache_paths(run_dir: str | Path, split: str) -> tuple[Path, Path]:
    """(RUN/cache/{split}.npy, RUN/cache/{split}.json)."""
    if split not in SPLITS:
        raise ValueError(f"split: {split!r} is not one of {', '.join(SPLITS)}")
    return RunLayout(run_dir).cache_files(split)


def ids_digest(image_ids: Sequence[str]) -> str:
    """sha256 of the ordered image ids: the cache is valid only for exactly this list."""
    digest = hashlib.sha256()
    for image_id in image_ids:
        digest.update(image_id.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def _shape(images: int) -> list[int]:
    width, height = IMAGE_SIZE
    return [images, height, width, 3]


def _expected_index(split: str, image_ids: Sequence[str], root: str | Path) -> dict[str, Any]:
    shape = _shape(len(image_ids))
    return {
        "version": FORMAT_VERSION,
        "split": split,
        "images": len(image_ids),
        "shape": shape,
        "dtype": "uint8",
        "layout": "NHWC",
        "root": str(Path(root).resolve()),
        "ids_sha256": ids_digest(image_ids),
    }


# -- reading ----------------------------------------------------------------------------------
def cache_problem(run_dir: str | Path, split: str, image_ids: Sequence[str], root: str | Path) -> str | None:
    """None when RUN/cache/{split} is complete and matches these ids and root; else why not."""
    npy, index_path = cache_paths(run_dir, split)
    if not index_path.is_file():
        return f"{index_path}: no index (cache not built, or its build did not finish)"
    try:
        index = read_json(index_path)
    except ValueError as exc:
        return str(exc)
    expected = _expected_index(split, image_ids, root)
    for key, value in expected.items():
        if index.get(key) != value:
            return f"{index_path}: {key} is {index.get(key)!r}, the run needs {value!r}"
    if index.get("image_ids") != list(image_ids):
        return f"{index_path}: image ids differ from split.csv"
    if not npy.is_file():
        return f"{npy}: missing"
    if npy.stat().st_size != index.get("npy_bytes"):
        return f"{npy}: {npy.stat().st_size} bytes, the index records {index.get('npy_bytes')}"
    return None


def open_cache(run_dir: str | Path, split: str, image_ids: Sequence[str], root: str | Path) -> np.ndarray:
    """The split's images as a read-only N x 218 x 178 x 3 uint8 memory map; CacheError if not usable."""
    problem = cache_problem(run_dir, split, image_ids, root)
    if problem is not None:
        raise CacheError(f"{problem}; run 'faceattr cache --run {run_dir}'")
    return _map(cache_paths(run_dir, split)[0], len(image_ids))


def _map(npy: Path, images: int) -> np.ndarray:
    """The memory map of a cache whose index was just checked (cache_problem is None)."""
    array = np.load(npy, mmap_mode="r")
    expected = tuple(_shape(images))
    if array.shape != expected or array.dtype != np.uint8:
        raise CacheError(f"{npy}: holds {array.dtype} {array.shape}, expected uint8 {expected}")
    return array


# -- writing ----------------------------------------------------------------------------------
def write_npy_chunks(path: str | Path, shape: Sequence[int], chunks: Iterable[np.ndarray]) -> int:
    """Write a uint8 .npy of `shape` from `chunks` (arrays of shape (k, *shape[1:])) appended in order.

    Only one chunk is held at a time: each is written and dropped before the next is pulled from
    the iterable. The file is written under a temporary name and renamed onto `path` only when
    exactly shape[0] rows have arrived. Returns the file's size in bytes.
    """
    shape = tuple(int(s) for s in shape)
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False, "shape": shape}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.lib.format.write_array_header_2_0(handle, header)
            handle.flush()
            rows = 0
            for chunk in chunks:
                chunk = np.ascontiguousarray(chunk, dtype=np.uint8)
                if chunk.shape[1:] != shape[1:]:
                    raise ValueError(f"{path}: chunk of shape {chunk.shape} does not fit {shape}")
                if rows + len(chunk) > shape[0]:
                    raise ValueError(f"{path}: more than the {shape[0]} rows announced")
                handle.write(memoryview(chunk).cast("B"))
                handle.flush()  # into the page cache now, not held in a Python buffer
                rows += len(chunk)
                del chunk
            if rows != shape[0]:
                raise ValueError(f"{path}: {rows} rows written, {shape[0]} announced")
            handle.flush()
            os.fsync(handle.fileno())
        size = tmp.stat().st_size
    return size


class _DecodedImages:
    """Dataset: item i is image_ids[i] decoded to a 218 x 178 x 3 uint8 array (resized if needed)."""

    def __init__(self, image_dir: Path, image_ids: Sequence[str]):
        self.image_dir = Path(image_dir)
        self.image_ids = list(image_ids)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> np.ndarray:
        image_id = self.image_ids[index]
        image = ResizeIfNeeded(IMAGE_SIZE)(open_image(self.image_dir / image_id, name=image_id))
        return np.asarray(image, dtype=np.uint8)


def _collate_stack(items: list[np.ndarray]) -> np.ndarray:
    return np.stack(items)


def decoded_chunks(
    image_dir: Path, image_ids: Sequence[str], *, num_workers: int = 0, chunk_images: int = CHUNK_IMAGES
) -> Iterable[np.ndarray]:
    """The images decoded in order, `chunk_images` at a time, by `num_workers` loader processes."""
    loader = DataLoader(
        _DecodedImages(image_dir, image_ids),
        batch_size=chunk_images,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate_stack,
        # Bounded read-ahead: at most workers x 2 chunks wait in memory.
        prefetch_factor=2 if num_workers > 0 else None,
    )
    yield from loader


def build_split_cache(
    run_dir: str | Path,
    split: str,
    image_ids: Sequence[str],
    root: str | Path,
    *,
    num_workers: int = 0,
    chunk_images: int = CHUNK_IMAGES,
) -> dict[str, Any]:
    """Build (or keep) RUN/cache/{split}; returns {"split", "images", "status", "path", "seconds"}."""
    npy, index_path = cache_paths(run_dir, split)
    if cache_problem(run_dir, split, image_ids, root) is None:
        return {"split": split, "images": len(image_ids), "status": "up-to-date", "path": str(npy), "seconds": 0.0}
    if not image_ids:
        raise CacheError(f"{RunLayout(run_dir).split}: the {split!r} split has no images to cache")

    start = time.perf_counter()
    # Remove the old index first: from here until the new one is written, the cache is not trusted.
    index_path.unlink(missing_ok=True)
    index = _expected_index(split, image_ids, root)
    log.info("cache %s: decoding %d images with %d worker(s) into %s", split, len(image_ids), num_workers, npy)
    images = run_dataset_dir(run_dir, root) / IMAGES_DIR  # the run's data version
    chunks = decoded_chunks(images, image_ids, num_workers=num_workers, chunk_images=chunk_images)
    index["npy_bytes"] = write_npy_chunks(npy, index["shape"], chunks)
    index["image_ids"] = list(image_ids)
    write_json(index_path, index)
    seconds = time.perf_counter() - start
    log.info("cache %s: %d images, %.1f GB in %.0f s (%.0f img/s)", split, len(image_ids),
             index["npy_bytes"] / 1e9, seconds, len(image_ids) / max(seconds, 1e-9))
    return {"split": split, "images": len(image_ids), "status": "built", "path": str(npy), "seconds": round(seconds, 2)}


def build_cache(run_dir: str | Path, splits: Sequence[str] = SPLITS, *, num_workers: int | None = None) -> dict:
    """Decode the run's images once into RUN/cache/{split}.npy + .json; keep what is already complete.

    Reads RUN/config.json (dataset root, num_workers) and RUN/split.csv. Returns
    {"run", "splits": {split: {"images", "status": "built" | "up-to-date", "path", "seconds"}}, "bytes"}.
    """
    run_dir = Path(run_dir)
    config = RunConfig.load(run_dir)
    split_of = read_split(run_dir)
    workers = resolve_num_workers(config.num_workers if num_workers is None else num_workers)
    results = {}
    total_bytes = 0
    for split in splits:
        ids = split_of.index[split_of.to_numpy() == split].tolist()
        results[split] = build_split_cache(run_dir, split, ids, config.root, num_workers=workers)
        total_bytes += cache_paths(run_dir, split)[0].stat().st_size
    return {"run": str(run_dir), "splits": results, "bytes": total_bytes}


def ensure_split_cache(run_dir: str | Path, split: str, image_ids: Sequence[str], root: str | Path,
                       num_workers: int = 0) -> np.ndarray:
    """The split's cache as a memory map, building it first when it is missing or stale (its index
    is checked once, by build_split_cache)."""
    build_split_cache(run_dir, split, image_ids, root, num_workers=num_workers)
    return _map(cache_paths(run_dir, split)[0], len(image_ids))


def upload(array: np.ndarray, device: "torch.device", chunk_images: int = 1024, threads: int | None = None) -> "torch.Tensor":
    """A copy of a (memory-mapped) uint8 array on `device`.

    On CUDA each chunk is read from the memory map straight into one of two pinned buffers by
    `threads` threads (numpy copies without the GIL, so reads of the page cache or the disk run in
    parallel) and sent to the GPU on a side stream while the next chunk is read: one host copy per
    byte and the transfer hidden behind it: every epoch task uploads its whole train split.
    """
    out = torch.empty(array.shape, dtype=torch.uint8, device=device)
    if device.type != "cuda":
        np.copyto(out.numpy(), array)
        return out

    threads = threads or min(8, os.cpu_count() or 1)
    chunk_images = max(1, min(chunk_images, len(array)))
    buffers = [torch.empty((chunk_images, *array.shape[1:]), dtype=torch.uint8, pin_memory=True) for _ in range(2)]
    sent = [None, None]  # per buffer: the event after its last copy to the GPU
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))  # `out`'s memory may still be in use there

    def read(target: np.ndarray, start: int, stop: int) -> None:
        np.copyto(target, array[start:stop])

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cache-upload") as pool:
        for k, start in enumerate(range(0, len(array), chunk_images)):
            buffer, rows = buffers[k % 2], min(chunk_images, len(array) - start)
            if sent[k % 2] is not None:
                sent[k % 2].synchronize()  # the GPU has what this buffer held before
            host = buffer.numpy()[:rows]
            bounds = np.linspace(0, rows, threads + 1).astype(int)
            list(pool.map(lambda i: read(host[bounds[i]:bounds[i + 1]], start + bounds[i], start + bounds[i + 1]),
                          range(threads)))
            with torch.cuda.stream(stream):
                out[start:start + rows].copy_(buffer[:rows], non_blocking=True)
                sent[k % 2] = torch.cuda.Event()
                sent[k % 2].record(stream)
    stream.synchronize()
    return out
