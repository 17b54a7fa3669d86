"""JPEG files decoded in batches on the training device (nvjpeg on CUDA), for scoring.

faceattr.engine.predict's loader workers read the bytes of plain JPEGs (plain_jpeg) and pack a
batch's into one tensor (RawJpegs); JpegDecoder decodes them on the device in one call and sends
whatever the device cannot decode through open_image, so every file keeps the outcome and the
error reason of the PIL path.

On CUDA the decoding runs on a stream that faceattr owns (DecodeStream), ordered explicitly
against the stream that runs the model: torchvision's decode_jpeg allocates its outputs from the
caller's current stream but nvjpeg writes them on a stream of its own, ordered after nothing, so
memory that kernels queued on the caller's stream still use could be handed to it and
overwritten (pytorch/vision PR 9606 reproduced it: NaNs and arbitrary pixels).
"""
from __future__ import annotations

import io
import logging
import warnings
from typing import Any, Callable, NamedTuple

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from faceattr.data.images import ImageError, open_image
from faceattr.data.transforms import normalise_batch

log = logging.getLogger(__name__)

# decode_jpeg's messages that are about the device or the library, not about one file
# (torchvision's decode_jpegs_cuda.cpp): after one, the device decoder is not tried again.
DEVICE_PROBLEMS = ("not compiled with nvjpeg", "failed to initialize nvjpeg", "failed to create", "nvjpeggetproperty",
                   "failed to synchronize", "cuda error", "cuda driver", "no kernel image", "device-side assert",
                   "expected the device parameter")


class RawJpegs(NamedTuple):
    """A batch's undecoded JPEGs: file j's bytes are data[offsets[j]:offsets[j + 1]].

    One tensor for the whole batch, not one per file: each tensor a loader worker returns costs
    a shared-memory file descriptor, and 512 of them per batch exhaust the usual limit of 1,024.
    """

    indices: "torch.Tensor"  # int64, the dataset indices of the files
    data: "torch.Tensor"  # uint8, the files' bytes end to end
    offsets: "torch.Tensor"  # int64, len(indices) + 1 positions in data

    @classmethod
    def pack(cls, indices: list[int], datas: list[bytes]) -> "RawJpegs":
        """The files' bytes copied end to end into one tensor."""
        sizes = [len(data) for data in datas]
        packed = torch.empty(sum(sizes), dtype=torch.uint8)
        view, position = packed.numpy(), 0
        for data, size in zip(datas, sizes):
            view[position:position + size] = np.frombuffer(data, dtype=np.uint8)
            position += size
        offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64))
        return cls(torch.tensor(indices, dtype=torch.long), packed, offsets)

    def files(self) -> list:
        """One 1-D uint8 view per file (decode_jpeg's input; no copy)."""
        bounds = self.offsets.tolist()
        return [self.data[start:end] for start, end in zip(bounds[:-1], bounds[1:])]


def plain_jpeg(data: bytes) -> bool:
    """True for a complete baseline RGB or grayscale JPEG that needs no EXIF rotation.

    Only those go to the batched device decoder: they decode there to the same pixels PIL gives.
    CMYK, truncated (no end marker), rotated, oversized or odd files go through open_image, which
    converts them or names the problem. Reads only the header.
    """
    if not (data.startswith(b"\xff\xd8\xff") and data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9")):
        return False
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            return (
                image.format == "JPEG"
                and image.mode in ("RGB", "L")
                and not image.info.get("progressive", False)
                and width * height <= (Image.MAX_IMAGE_PIXELS or float("inf"))
                and image.getexif().get(0x0112, 1) == 1
            )
    except Exception:  # noqa: BLE001 - any header problem: let open_image report it
        return False


class JpegDecoder:
    """Batched decode_jpeg on one device, with open_image (PIL, on the CPU) behind it.

    A batch is decoded in one call. One file that the device cannot decode fails the whole call,
    so the batch is then decoded file by file, and what still fails goes through open_image,
    which reads it or gives the errors file its reason; each fallback is logged with its cause.
    Out of memory is raised, not hidden. An error about the device or the library (DEVICE_PROBLEMS),
    or a batch of which the device decoded nothing while PIL read at least 4 files, turns the
    device decoder off (`enabled`) for the rest of the run: every later file goes through open_image.
    """

    def __init__(self, device, image_size, mean, std, transform, stream: "DecodeStream | None" = None):
        """`image_size` (w, h), `mean` and `std` are the model's input; `transform` is its PIL evaluation
        transform. On CUDA the batches are decoded on `stream` (a new DecodeStream by default)."""
        self.device = device
        self.enabled = True
        width, height = image_size
        self.size = (height, width)
        self.transform = transform
        self.mean, self.std = tuple(mean), tuple(std)
        self.stream = stream if stream is not None or device.type != "cuda" else DecodeStream(device)

    def decode(self, raw: RawJpegs):
        """(indices, normalised N x 3 x H x W on the device, errors) of a batch's undecoded JPEGs.

        With a DecodeStream, all of it is queued there and the batch handed over to the caller's stream."""
        if self.stream is None:
            return self._decode_batch(raw)
        return self.stream.run(lambda: self._decode_batch(raw), crossing=lambda result: [result[1]])

    def _decode_batch(self, raw: RawJpegs):
        files = raw.files()
        indices = raw.indices.tolist()
        decoded = self._on_device(files) if self.enabled else [None] * len(files)
        pixel_indices, pixels, pil_indices, pil_images, errors = [], [], [], [], []
        for index, data, image in zip(indices, files, decoded):
            if image is not None:
                if tuple(image.shape[1:]) != self.size:  # rare: not CelebA's size
                    image = torch.nn.functional.interpolate(
                        image[None].float(), size=self.size, mode="bilinear", antialias=True
                    )[0].round_().clamp_(0, 255).to(torch.uint8)
                pixel_indices.append(index)
                pixels.append(image)
                continue
            try:
                pil_image = open_image(io.BytesIO(data.numpy().tobytes()), name=str(index))
            except ImageError as exc:
                errors.append((index, str(exc).removeprefix(f"{index}: ")))
                continue
            pil_indices.append(index)
            pil_images.append(self.transform(pil_image))
        if self.enabled and len(files) >= 4 and not pixels and len(pil_images) >= 4:
            self._stop(f"it decoded none of a batch of {len(files)} of which PIL read {len(pil_images)}")

        parts = []
        if pixels:
            # Normalised straight into the model's memory order (channels_last on CUDA), as the cache path is.
            parts.append(normalise_batch(torch.stack(pixels).permute(0, 2, 3, 1), self.mean, self.std))
        if pil_images:
            batch = torch.stack(pil_images)
            if self.device.type == "cuda":
                batch = batch.pin_memory()
            parts.append(batch.to(self.device, non_blocking=True))
        out_indices = torch.tensor(pixel_indices + pil_indices, dtype=torch.long)
        if not parts:
            return out_indices, torch.empty(0), errors
        batch = parts[0] if len(parts) == 1 else torch.cat(parts)
        if self.device.type == "cuda":  # a no-op unless PIL's images joined the batch
            batch = batch.contiguous(memory_format=torch.channels_last)
        return out_indices, batch, errors

    def _on_device(self, files: list) -> list:
        """Decoded uint8 3 x H x W tensors on the device; None for a file the device could not decode."""
        try:
            return self._decode(files)
        except RuntimeError as exc:
            if not self._file_problem(exc):
                return [None] * len(files)
            log.warning("device JPEG decoding of a batch of %d file(s) failed (%s); decoding them one by one",
                        len(files), _first_line(exc))
        decoded, causes = [], []
        for data in files:
            if not self.enabled:
                decoded.append(None)
                continue
            try:
                decoded.append(self._decode([data])[0])
            except RuntimeError as exc:
                if self._file_problem(exc):
                    causes.append(_first_line(exc))
                decoded.append(None)
        if causes:
            log.warning("%d file(s) the device could not decode go through PIL (first cause: %s)", len(causes), causes[0])
        return decoded

    def _decode(self, files: list) -> list:
        with warnings.catch_warnings():
            # torchvision 0.29 marks its decoders deprecated in favour of TorchCodec; they still work.
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_jpeg(files, mode=ImageReadMode.RGB, device=self.device)

    def _file_problem(self, exc: RuntimeError) -> bool:
        """True when `exc` is about the files; raises it when out of memory; else stops the device decoder."""
        message = str(exc).lower()
        if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in message:
            raise exc
        if any(problem in message for problem in DEVICE_PROBLEMS):
            self._stop(_first_line(exc))
            return False
        return True

    def _stop(self, cause: str) -> None:
        self.enabled = False
        log.warning("device JPEG decoding on %s turned off for the rest of this run (%s); "
                    "the remaining files are decoded with PIL on the CPU, more slowly", self.device, cause)


class DecodeStream:
    """A CUDA stream of faceattr's own for decoding, ordered both ways against the caller's stream.

    `run(work)` queues `work` (decode_jpeg and the normalisation after it) on this stream:
    - the host first waits for this stream's previous batch to be done, so no block that this
      stream freed is still in use when decode_jpeg's outputs are allocated from its pool (nvjpeg
      writes them on its own, unordered stream);
    - this stream waits on the caller's (the consumer's) work queued so far, so nothing decoded
      here overwrites memory that work still reads;
    - the caller's stream waits on the decode before it may read the batch;
    - each tensor that crosses (`crossing(result)`) is marked used by the caller's stream
      (record_stream), so its memory is not reused before the caller's work on it is done.
    The model keeps running on the caller's stream meanwhile: decode and model overlap.
    `cuda` is the module that provides Stream, Event, current_stream and stream (torch.cuda; a
    test passes a recording stand-in).
    """

    def __init__(self, device, cuda: Any = None):
        self.device = device
        self.cuda = cuda if cuda is not None else torch.cuda
        self.stream = self.cuda.Stream(device=device)
        self._previous = None  # the event recorded after the previous batch's work on self.stream

    def run(self, work: Callable[[], Any], crossing: Callable[[Any], list] = lambda result: []) -> Any:
        consumer = self.cuda.current_stream(self.device)
        if self._previous is not None:
            self._previous.synchronize()
        consumer_ready = self.cuda.Event()
        consumer_ready.record(consumer)
        self.stream.wait_event(consumer_ready)
        with self.cuda.stream(self.stream):
            result = work()
        decoded = self.cuda.Event()
        decoded.record(self.stream)
        consumer.wait_event(decoded)
        for tensor in crossing(result):
            if tensor.device.type != "cpu":  # an empty batch is a CPU tensor: nothing crosses
                tensor.record_stream(consumer)
        self._previous = decoded
        return result


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
