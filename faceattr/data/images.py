"""Opening one image safely: any common format in, an upright RGB PIL image out.

Training reads CelebA's clean JPEGs, but prediction reads whatever is in a private folder:
PNGs, grayscale scans, RGBA or palette images, CMYK JPEGs, phone photos rotated by an EXIF
tag, truncated downloads, or files that are not images at all. Everything the model sees goes
through `open_image`, which either returns a usable image or raises `ImageError` with the
reason, so a caller can record the failure instead of crashing or silently skipping.
"""
from __future__ import annotations

import os
import warnings
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SIZE = (178, 218)  # (w, h): CelebA's aligned crops, the model's input size
# ImageNet normalisation: the pretrained backbones were trained with it.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

# Transparent pixels are composited onto white: the colour a viewer shows them on.
BACKGROUND = (255, 255, 255)


class ImageError(ValueError):
    """An input could not be read as an image; the message names it and says why."""


def open_image(source: str | os.PathLike | BinaryIO, name: str | None = None):
    """Decode `source` (a path or a binary file object) into an RGB PIL image.

    The image is fully decoded here (not lazily), rotated upright by its EXIF orientation tag,
    and converted to RGB. Raises ImageError for a file that is not an image, is truncated or
    corrupt, or declares more pixels than PIL's decompression-bomb limit
    (PIL.Image.MAX_IMAGE_PIXELS, about 89 megapixels), which protects memory.
    """
    if name is None:
        name = str(source) if isinstance(source, (str, os.PathLike)) else getattr(source, "name", "<image>")
    try:
        with warnings.catch_warnings():
            # PIL only warns between 1x and 2x the limit; treat that as a bomb too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                image.load()  # decode now: truncation and corruption surface here, not later
                image = ImageOps.exif_transpose(image)
                return _to_rgb(image)
    except FileNotFoundError:
        raise ImageError(f"{name}: file not found") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image (format not recognised)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{name}: refused as a decompression bomb ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - untrusted input: any decoder failure is a bad file
        # PIL reports truncated or corrupt data as OSError ("image file is truncated"), and
        # malformed headers as SyntaxError, ValueError, struct.error and the like.
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise ImageError(f"{name}: unreadable image ({reason})") from None


def _to_rgb(image):
    """Convert any PIL mode to RGB; alpha is composited onto BACKGROUND, 16-bit is rescaled."""
    if image.mode == "RGB":
        return image
    if image.mode == "P":
        # A palette may carry transparency; go through RGBA so it is honoured.
        image = image.convert("RGBA")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: PIL's convert("RGB") clips at 255, so rescale to 8 bits first.
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(values.max()), 1.0)
        values = np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(values).convert("RGB")  # uint8 2-D: mode L
    if "A" in image.getbands():
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    # L, 1, CMYK, YCbCr, LAB, HSV, F: PIL converts these to RGB directly.
    return image.convert("RGB")

