"""The preprocessing of every image, in one place: the write-up's PIL transforms and the same
augmentation as batched tensor ops for the decode-once fast path.
"""
from __future__ import annotations

import functools

import torch
from torchvision import transforms
from torchvision.transforms import functional as TF

from faceattr.data.images import IMAGE_SIZE, MEAN, STD

# The write-up's augmentation: enlarge to 220x270 (keeps CelebA's aspect ratio), then crop a
# random 178x218 window back out of it.
AUGMENT_SIZE = (220, 270)  # (w, h)


class ResizeIfNeeded(torch.nn.Module):
    """Resize a PIL image to `size` (w, h) unless it already has that size."""

    def __init__(self, size: tuple[int, int]):
        super().__init__()
        self.size = tuple(size)

    def forward(self, image):
        if image.size == self.size:
            return image
        width, height = self.size
        return TF.resize(image, [height, width])

    def extra_repr(self) -> str:
        return f"size={self.size}"


def _to_normalised_tensor() -> list:
    return [transforms.ToTensor(), transforms.Normalize(MEAN, STD)]


def train_transform() -> transforms.Compose:
    """PIL image -> normalised 3x218x178 tensor with the write-up's augmentation.

    Horizontal flip with p=0.5, resize to 220x270 (w x h), random 178x218 crop, ImageNet
    normalisation. Randomness comes from torch's RNG, so a seeded loader repeats it exactly.
    """
    width, height = IMAGE_SIZE
    aug_width, aug_height = AUGMENT_SIZE
    return transforms.Compose([
        transforms.RandomHorizontalFlip(p=0.5),
        transforms.Resize((aug_height, aug_width)),
        transforms.RandomCrop((height, width)),
        *_to_normalised_tensor(),
    ])


def eval_transform() -> transforms.Compose:
    """PIL image -> normalised 3x218x178 tensor, no augmentation.

    CelebA's aligned images are already 178x218 and pass through unchanged; an image of any
    other size is resized (not cropped) to 178x218, so its aspect ratio may change.
    """
    return transforms.Compose([ResizeIfNeeded(IMAGE_SIZE), *_to_normalised_tensor()])


CROP_TOP_MAX = AUGMENT_SIZE[1] - IMAGE_SIZE[1]  # 52: RandomCrop's top offset is in [0, 52]
CROP_LEFT_MAX = AUGMENT_SIZE[0] - IMAGE_SIZE[0]  # 42: left offset in [0, 42]


def augment_params(n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random (flip, top, left) per image, drawn as RandomHorizontalFlip(0.5) and RandomCrop draw them.

    Drawn on the CPU from `generator`, so a seeded epoch repeats on any device (augment_batch
    moves them in one pinned copy).
    """
    flip = torch.rand(n, generator=generator) < 0.5
    top = torch.randint(0, CROP_TOP_MAX + 1, (n,), generator=generator)
    left = torch.randint(0, CROP_LEFT_MAX + 1, (n,), generator=generator)
    return flip, top, left


def augment_batch(images: torch.Tensor, flip: torch.Tensor, top: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
    """The training augmentation of a uint8 N x 218 x 178 x 3 (NHWC) batch, on its device.

    Equivalent to train_transform per image with the given flips and crop offsets, to within one
    grey level (PIL's rounding; on CUDA, which resizes in floating point, the result is not rounded
    to uint8 as PIL's is): resize to 220x270 (bilinear, antialiased like PIL), flip, crop the 178x218 window
    at (top, left), normalise. Resizing commutes with a horizontal flip, so one batched resize comes first, then
    the crops are two gathers of contiguous runs (rows, then a window of each row), then the flip.
    """
    device = images.device
    n = images.shape[0]
    width, height = IMAGE_SIZE
    aug_width, aug_height = AUGMENT_SIZE
    nchw = images.permute(0, 3, 1, 2)  # a channels_last view, no copy
    if device.type == "cpu":
        # torch's CPU kernel has a fast uint8 path, and rounds to uint8 as PIL does.
        resized = torch.nn.functional.interpolate(nchw, size=(aug_height, aug_width), mode="bilinear", antialias=True)
    else:
        # CUDA interpolates floating point only.
        resized = torch.nn.functional.interpolate(nchw.float(), size=(aug_height, aug_width), mode="bilinear",
                                                  antialias=True)
    rows_of_pixels = resized.permute(0, 2, 3, 1).contiguous().view(n * aug_height, aug_width * 3)
    # One copy of the draws, from pinned memory: a copy from pageable host memory (non_blocking
    # or not) waits for the GPU to finish its queue.
    draws = torch.stack([top.long(), left.long(), flip.long()])
    if device.type == "cuda" and draws.device.type == "cpu":
        draws = draws.pin_memory()
    top, left, flip = draws.to(device, non_blocking=True).unbind()
    flip = flip.bool()
    rows = (torch.arange(n, device=device)[:, None] * aug_height + top[:, None] + torch.arange(height, device=device))
    kept_rows = rows_of_pixels.index_select(0, rows.view(-1)).view(n, height, aug_width * 3)
    # Cropping at `left` in the flipped image is cropping the mirrored window, then flipping it.
    left = torch.where(flip, aug_width - width - left, left)
    windows = kept_rows.unfold(2, width * 3, 3)  # n x 218 x 43 x 534: every horizontal offset, no copy
    cropped = windows[torch.arange(n, device=device), :, left].view(n, height, width, 3)
    cropped = torch.where(flip[:, None, None, None], cropped.flip(2), cropped)
    return normalise_batch(cropped)


def normalise_batch(images: torch.Tensor, mean: tuple = MEAN, std: tuple = STD) -> torch.Tensor:
    """uint8 (or float 0..255) N x H x W x 3 -> float32 N x 3 x H x W, as ToTensor + Normalize(mean, std).

    One pass: the uint8 is read, scaled and shifted into the float output. On CUDA the result is
    channels_last (the memory order the model runs in); on the CPU contiguous NCHW, what the CPU
    convolutions get.
    """
    device = images.device
    n, height, width, _ = images.shape
    layout = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    scale, shift = normalisation(device, tuple(mean), tuple(std))
    out = torch.empty((n, 3, height, width), dtype=torch.float32, device=device, memory_format=layout)
    return torch.addcmul(shift, images.permute(0, 3, 1, 2), scale, out=out)


@functools.lru_cache(maxsize=None)
def normalisation(device: torch.device, mean: tuple = MEAN, std: tuple = STD) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with x * scale + shift == (x / 255 - mean) / std, made once per device: a
    tensor built from Python values per batch is a blocking copy that waits for the device's queue."""
    std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    return (1 / (std * 255)).to(device), (-mean / std).to(device)
