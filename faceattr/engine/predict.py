"""Scoring a folder or zip of unlabelled images with RUN/model.pt into a CSV.

The output is what the write-up delivered for its private set: a pandas `to_csv` table with
`image_id` and the 40 attributes as -1/1, one row per image, sorted by image name. Every file
seen ends up in exactly one place: a row of the CSV, or a row of `<out stem>.errors.csv`
(image_id, reason) when it cannot be read as an image. Only hidden files and folders (names
starting with "." and macOS's __MACOSX) are ignored.

The files: which are listed, how their names are written, where the CSVs may go and how they
are written, is faceattr.engine.predict_io (its docstring gives the rules).
"""
from __future__ import annotations

import io
import logging
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from torchvision import transforms

from faceattr.attributes import ATTRIBUTES
from faceattr.data.images import ImageError, open_image
from faceattr.data.jpeg import JpegDecoder, RawJpegs, plain_jpeg
from faceattr.data.transforms import ResizeIfNeeded
from faceattr.engine.inference import prepare_for_inference, queue_scores
from faceattr.engine.predict_io import (  # noqa: F401 - file_name: where callers have always found it
    check_output, csv_name, errors_path, file_name, guard, list_folder, list_zip, write_outputs,
)
from faceattr.model import load_model_file
from faceattr.progress import Progress
from faceattr.runtime import resolve_device, resolve_num_workers

log = logging.getLogger(__name__)

# A zip entry larger than this is reported as an error rather than read into memory.
MAX_FILE_BYTES = 256 * 1024 * 1024


def predict(
    model_path: str | Path,
    images: str | Path,
    out_csv: str | Path,
    *,
    scores: bool = False,
    batch_size: int = 128,
    device: str | None = None,
    timings: dict | None = None,
    roots: list[Path] | None = None,
) -> dict:
    """Predict the 40 attributes of every image in `images` (a folder or a .zip) into `out_csv`.

    With `scores`, the raw model outputs are added as "<name>_score" columns. Returns the
    counts: images (files seen) = rows (predicted) + errors (unreadable). A `timings` dict is
    filled with the parts of the wall time (seconds): load_s (model to the device), first_batch_s
    (loader start and first batch), loop_s, write_s, and steady_images_per_second (after the
    first batch), so a benchmark can tell fixed costs from the rate.
    """
    started = time.perf_counter()
    model_path, images, out_csv = Path(model_path), Path(images), Path(out_csv)
    if batch_size < 1:
        raise ValueError(f"batch_size: {batch_size} must be at least 1")
    errors_csv = errors_path(out_csv)
    check_output(out_csv, images)  # before any scoring work, not after it
    device = resolve_device(device)

    model, info = load_model_file(model_path)
    if list(info["attributes"]) != list(ATTRIBUTES):
        raise ValueError(f"{model_path}: its attributes are not the 40 CelebA attributes in official order")
    thresholds = info["thresholds"].float().numpy()

    # On CUDA, workers only read the bytes of plain JPEGs and nvjpeg decodes each batch on the GPU.
    raw_jpeg = device.type in DEVICE_DECODE
    dataset = ImageFiles.from_path(images, transform=_transform(info), raw_jpeg=raw_jpeg, roots=roots)
    total = len(dataset)
    batches = -(-total // batch_size)
    # Decoding JPEGs is the CPU-bound part: spread it over worker processes when there is more
    # than one batch to overlap with the model.
    workers = min(resolve_num_workers(-1), batches) if batches > 1 else 0
    # Raw JPEG bytes are not pinned: nvjpeg reads plain host memory, and pinning costs a copy.
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
        collate_fn=collate_images, pin_memory=device.type == "cuda" and not raw_jpeg,
    )

    model = prepare_for_inference(model, device)
    decoder = JpegDecoder(device, info["image_size"], info["mean"], info["std"], _transform(info)) if raw_jpeg else None
    all_scores = np.zeros((total, len(ATTRIBUTES)), dtype=np.float32)
    failures: dict[int, str] = {}
    progress = Progress(total, f"predict {images.name}")
    loop_start = time.perf_counter()

    def model_batches():
        """(indices, images) for the model; unreadable files are recorded in `failures` on the way."""
        for indices, batch, errors, raw in loader:
            seen = len(indices) + len(errors) + len(raw.indices)
            if len(indices):
                yield indices, batch
            if len(raw.indices):
                decoded_indices, decoded, raw_errors = decoder.decode(raw)
                errors = errors + raw_errors
                if len(decoded_indices):
                    yield decoded_indices, decoded
            failures.update(errors)
            progress.update(seen)

    first_done = None  # (seconds, images) when the first batch's scores were back
    # On CUDA every batch goes to the model at the loader's batch size: a batch split between the
    # device decoder and PIL, or the last one, is padded (cuDNN autotunes each new shape once).
    pad_to = batch_size if device.type == "cuda" else None
    with torch.inference_mode():
        # One batch in flight: the next batch is decoded (on CUDA, on the decoder's own stream,
        # faceattr.data.jpeg.DecodeStream) while the device still runs the model on the previous
        # one; its scores are fetched only then.
        in_flight, done = None, 0
        for indices, images in model_batches():
            if in_flight is not None:
                all_scores[in_flight[0].numpy()] = in_flight[1].cpu().numpy()
                done += len(in_flight[0])
                first_done = first_done or (time.perf_counter(), done)
            in_flight = (indices, queue_scores(model, images, device, pad_to=pad_to))
        if in_flight is not None:
            all_scores[in_flight[0].numpy()] = in_flight[1].cpu().numpy()
            done += len(in_flight[0])
    loop_end = time.perf_counter()
    progress.close()
    dataset.close()

    ok = np.array([i for i in range(total) if i not in failures], dtype=np.int64)
    image_ids = pd.Index([csv_name(dataset.image_ids[i]) for i in ok], name="image_id")
    table = pd.DataFrame(
        np.where(all_scores[ok] >= thresholds, 1, -1).astype(np.int8), index=image_ids, columns=list(ATTRIBUTES)
    )
    if scores:
        raw = pd.DataFrame(all_scores[ok], index=image_ids, columns=[f"{name}_score" for name in ATTRIBUTES])
        table = pd.concat([table, raw], axis=1)
    error_table = pd.DataFrame(
        {"image_id": [csv_name(dataset.image_ids[i]) for i in sorted(failures)],
         "reason": [csv_name(failures[i]) for i in sorted(failures)]}
    )
    write_outputs(table, error_table, out_csv, errors_csv)
    if failures:
        log.warning("%d of %d file(s) could not be read; see %s", len(failures), total, errors_csv)
    if timings is not None:
        first_s, first_images = first_done or (loop_end, done)
        timings.update({
            "load_s": loop_start - started,
            "first_batch_s": first_s - loop_start,
            "loop_s": loop_end - loop_start,
            "write_s": time.perf_counter() - loop_end,
            "steady_images_per_second": (done - first_images) / (loop_end - first_s) if loop_end > first_s else None,
            "device_decode": decoder is not None and decoder.enabled,
        })
    return {"images": total, "rows": len(ok), "errors": len(failures), "csv": str(out_csv), "errors_csv": str(errors_csv)}


class ImageFiles:
    """A map-style dataset over the files of a folder or a zip: item i is (i, tensor or None, reason).

    Unreadable files yield None and the reason instead of raising, so one bad file cannot stop
    a batch. A zip is opened lazily in each process: DataLoader workers cannot share a handle.
    """

    def __init__(self, image_ids: list[str], transform, *, folder: Path | None = None, archive: Path | None = None,
                 raw_jpeg: bool = False, roots: list[Path] | None = None, refused: dict[str, str] | None = None):
        self.image_ids = image_ids
        self.roots = roots  # files of a folder are opened only if they resolve inside these
        self.refused = refused or {}  # entries the listing refused: image_id -> reason
        self.transform = transform
        self.raw_jpeg = raw_jpeg  # plain JPEGs come back undecoded, as a uint8 tensor of their bytes
        self.folder = folder
        self.archive = archive
        self._zip: zipfile.ZipFile | None = None
        self._zip_pid: int | None = None

    @classmethod
    def from_path(cls, images: Path, transform, raw_jpeg: bool = False,
                  roots: list[Path] | None = None) -> "ImageFiles":
        if not images.exists():
            raise FileNotFoundError(f"{images}: no such folder or zip file")
        if images.is_dir():
            refused: dict[str, str] = {}
            ids = sorted([*list_folder(images, roots=roots, refused=refused), *refused])
            dataset = cls(ids, transform, folder=images, raw_jpeg=raw_jpeg, roots=roots, refused=refused)
        elif zipfile.is_zipfile(images):
            ids = list_zip(images)
            dataset = cls(ids, transform, archive=images, raw_jpeg=raw_jpeg)
        else:
            raise ValueError(f"{images}: neither a folder nor a zip archive")
        if not ids:
            raise ValueError(f"{images}: no files to predict (hidden files and __MACOSX are ignored)")
        return dataset

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int):
        image_id = self.image_ids[index]
        if image_id in self.refused:
            return index, None, self.refused[image_id]
        if self.archive is None and self.roots is not None:
            reason = guard(self.folder / image_id, self.roots)  # checked when listed, and again here (a swap)
            if reason:
                return index, None, reason
        try:
            source = self._read_entry(image_id) if self.archive is not None else self.folder / image_id
            if self.raw_jpeg:
                data = source.getvalue() if self.archive is not None else _read_file(source, image_id)
                if data is not None and plain_jpeg(data):
                    return index, data, RAW_JPEG  # bytes: collate_images packs a batch's into one tensor
                if data is not None:
                    source = io.BytesIO(data)
            image = open_image(source, name=image_id)
        except ImageError as exc:
            return index, None, str(exc).removeprefix(f"{image_id}: ")
        return index, self.transform(image), ""

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None

    def _read_entry(self, name: str):
        if self._zip is None or self._zip_pid != os.getpid():
            self._zip = zipfile.ZipFile(self.archive)
            self._zip_pid = os.getpid()
        info = self._zip.getinfo(name)
        if info.file_size > MAX_FILE_BYTES:
            raise ImageError(f"{name}: {info.file_size} bytes uncompressed, over the {MAX_FILE_BYTES} byte limit")
        try:
            return io.BytesIO(self._zip.read(info))
        except (zipfile.BadZipFile, RuntimeError, OSError, EOFError) as exc:  # CRC error, encrypted, damaged
            raise ImageError(f"{name}: cannot read the zip entry ({exc})") from None


def collate_images(items):
    """Stack the decoded images of a batch; pass failures as (index, reason), undecoded JPEGs packed as RawJpegs."""
    good = [(index, tensor) for index, tensor, reason in items if tensor is not None and reason != RAW_JPEG]
    errors = [(index, reason) for index, tensor, reason in items if tensor is None]
    raw = [(index, data) for index, data, reason in items if reason == RAW_JPEG]
    indices = torch.tensor([index for index, _ in good], dtype=torch.long)
    batch = torch.stack([tensor for _, tensor in good]) if good else torch.empty(0)
    return indices, batch, errors, RawJpegs.pack([index for index, _ in raw], [data for _, data in raw])


# -- decoding JPEG batches on the device ----------------------------------------------------------
# Device types on which plain JPEGs are decoded in batches by torchvision.io.decode_jpeg (nvjpeg on
# CUDA) instead of PIL in the workers. Anything unusual takes the PIL path (open_image), so every
# file keeps the same outcome and the same error reason.
DEVICE_DECODE = ("cuda",)
RAW_JPEG = "<raw jpeg>"  # the reason slot of an item that holds a plain JPEG's bytes, undecoded


def _read_file(path: Path, image_id: str) -> bytes | None:
    """The file's bytes, or None when it is too large to read whole (open_image then decides)."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return None
        return path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{image_id}: file not found") from None
    except OSError as exc:
        raise ImageError(f"{image_id}: cannot read the file ({exc})") from None


def _transform(info: dict):
    """The evaluation transform with the model file's input size and normalisation."""
    return transforms.Compose([
        ResizeIfNeeded(tuple(info["image_size"])),
        transforms.ToTensor(),
        transforms.Normalize(info["mean"], info["std"]),
    ])
