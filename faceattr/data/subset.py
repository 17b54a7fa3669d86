"""A random subset of a CelebA folder, in the official layout, for training where the whole set is too slow.

`make run` on a CPU with real CelebA uses it: a CPU trains too slowly for whole epochs of the
full set. `python -m faceattr.data.subset SOURCE OUT N` writes OUT with
N images drawn at random (seeded) and the three label files cut down to them, which
faceattr.data.download.acquire then reads as any local source.
"""
from __future__ import annotations

import os
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np

from faceattr.attributes import ATTRIBUTES
from faceattr.data.labels import read_attributes, read_identity, read_partition
from faceattr.data.layout import ATTR_FILE, IDENTITY_FILE, IMAGES_DIR, IMAGES_ZIP, PARTITION_FILE
from faceattr.fsutil import read_json, write_json, write_text

MARKER = "subset.json"  # what OUT was drawn from; written last, so it also marks a finished subset


def subsample(source: str | Path, out: str | Path, n: int, seed: int = 0) -> dict:
    """Write `n` of `source`'s images (a folder with img_align_celeba.zip or img_align_celeba/ and the
    list files) to `out` in the same layout, images extracted. Keeps an `out` already drawn from the
    same source with the same n and seed."""
    source, out = Path(source), Path(out)
    if n < 1:
        raise ValueError(f"n: {n} must be at least 1")
    drawn = {"source": str(source.resolve()), "images": n, "seed": seed}
    if (out / MARKER).is_file() and read_json(out / MARKER) == drawn:
        return {"out": str(out), "images": n, "status": "up-to-date"}
    attributes = read_attributes(source / ATTR_FILE)
    archive = zipfile.ZipFile(source / IMAGES_ZIP) if (source / IMAGES_ZIP).is_file() else None
    if archive is not None:
        members = {Path(name).name: name for name in archive.namelist() if name.lower().endswith(".jpg")}
    elif (source / IMAGES_DIR).is_dir():
        members = {entry.name: entry.path for entry in os.scandir(source / IMAGES_DIR) if entry.is_file()}
    else:
        raise FileNotFoundError(f"{source}: holds neither {IMAGES_ZIP} nor {IMAGES_DIR}/")
    present = [image_id for image_id in attributes.index if image_id in members]
    if n > len(present):
        raise ValueError(f"n: {n} is more than the {len(present)} labelled images of {source}")
    chosen = sorted(np.random.default_rng(seed).choice(present, size=n, replace=False).tolist())

    # The images and label files first, the marker last.
    shutil.rmtree(out, ignore_errors=True)
    (out / IMAGES_DIR).mkdir(parents=True)
    for image_id in chosen:
        target = out / IMAGES_DIR / image_id
        if archive is not None:
            target.write_bytes(archive.read(members[image_id]))
        else:
            shutil.copyfile(members[image_id], target)
    for name, reader in ((PARTITION_FILE, read_partition), (IDENTITY_FILE, read_identity)):
        if (source / name).is_file():
            values = reader(source / name)
            write_text(out / name, "".join(f"{image_id} {values[image_id]}\r\n" for image_id in chosen))
    rows = attributes.loc[chosen, list(ATTRIBUTES)].to_numpy().tolist()
    lines = [str(n), "".join(f"{name} " for name in ATTRIBUTES)]
    lines += [image_id + "".join(f" {v:2d}" for v in row) for image_id, row in zip(chosen, rows)]
    write_text(out / ATTR_FILE, "".join(line + "\r\n" for line in lines))
    write_json(out / MARKER, drawn)
    return {"out": str(out), "images": n, "of": len(present), "status": "written"}


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: python -m faceattr.data.subset SOURCE OUT N")
    print(subsample(sys.argv[1], sys.argv[2], int(sys.argv[3])))
