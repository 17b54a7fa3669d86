"""A synthetic face dataset in the official CelebA distribution format, for demos and tests.

This is SYNTHETIC data and never CelebA: cartoon faces drawn with PIL, labelled by construction.
`generate(out, n, seed)` writes exactly the files the official distribution has, byte for byte in
their format (CRLF, count line, header with a trailing space, values right-aligned in width 2):

    out/img_align_celeba.zip     img_align_celeba/000001.jpg ... (178x218 JPEG, quality 90, stored)
    out/list_attr_celeba.txt     count line, the 40 names, "000001.jpg -1  1 ..." rows
    out/list_eval_partition.txt  "000001.jpg 0" rows (0 train, 1 val, 2 test; identity-disjoint)
    out/identity_CelebA.txt      "000001.jpg 2880" rows

so every reader of the real files (faceattr.data.download, faceattr.data.labels) reads it
unchanged. The same seed gives the same bytes in every file. The labels come from
faceattr.synth.sampling, the faces from faceattr.synth.drawing.

`generate(out, n, seed, base=DIR)` writes next week's data: DIR's images and label rows unchanged,
then `n` new images of new identities numbered after them (what a team adding a labelled batch
has); `corrupt="flip"` writes the new batch's labels inverted and `corrupt="shuffle"` gives each
new image another new image's labels: a labelling accident. A corrupted batch is all in the
official train partition, so the test images stay correctly labelled and measure the damage.
"""
from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from faceattr.attributes import ATTRIBUTES
from faceattr.data.labels import read_attributes
from faceattr.data.layout import ATTR_FILE, IDENTITY_FILE, IMAGES_DIR, IMAGES_ZIP, PARTITION_FILE
from faceattr.fsutil import atomic_path
from faceattr.synth.drawing import noise_field, render_face
from faceattr.synth.sampling import SyntheticLabels, check_counts, sample_labels

JPEG_QUALITY = 90
ZIP_TIMESTAMP = (1980, 1, 1, 0, 0, 0)  # fixed, so the zip's bytes depend only on the seed


CORRUPTIONS = ("flip", "shuffle")


def generate(out: Path, n: int, seed: int, *, base: Path | None = None, corrupt: str | None = None) -> dict[str, Any]:
    """Write a synthetic dataset of `n` images in the official CelebA layout under `out` (after
    `base`'s images when given, with the new batch's labels corrupted when asked).

    Returns a summary: images, identities, partition counts, path, seconds, seed.
    """
    out = Path(out)
    check_counts(n, seed)
    if corrupt not in (None, *CORRUPTIONS):
        raise ValueError(f"corrupt: {corrupt!r} is not one of {', '.join(CORRUPTIONS)}")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a folder; choose a folder for the synthetic dataset")
    if base is not None and Path(base).resolve() == out.resolve():
        raise ValueError(f"base: {base} is the output folder; write next week's data into another folder")
    started = time.perf_counter()
    data = sample_labels(n, seed)
    kept = _Base.read(Path(base)) if base is not None else _Base()
    check_counts(len(kept.names) + n, seed)
    table, partition = data.table, data.partition
    if corrupt == "flip":
        table = -table
    elif corrupt == "shuffle":
        table = table[np.random.default_rng([seed, 2]).permutation(n)]
    if corrupt is not None:
        partition = np.zeros_like(partition)

    out.mkdir(parents=True, exist_ok=True)
    names = [f"{len(kept.names) + i + 1:06d}.jpg" for i in range(n)]
    identity = data.identity + kept.next_identity
    _write_images(out / IMAGES_ZIP, names, data, seed, kept.images)
    _write_crlf(out / ATTR_FILE, _attribute_lines(kept.names + names, np.concatenate([kept.table, table])))
    _write_crlf(out / PARTITION_FILE, kept.partition + [f"{name} {p}" for name, p in zip(names, partition)])
    _write_crlf(out / IDENTITY_FILE, kept.identity + [f"{name} {p}" for name, p in zip(names, identity)])

    counts = np.bincount(partition, minlength=3)
    return {
        "images": len(kept.names) + n,
        "added": n if base is not None else None,
        "corrupt": corrupt,
        "identities": int(len(np.unique(data.person))),
        "partition": {"train": int(counts[0]), "val": int(counts[1]), "test": int(counts[2])},
        "path": str(out),
        "seed": seed,
        "seconds": round(time.perf_counter() - started, 3),
    }


class _Base:
    """Last week's files, kept as they are in next week's: names, label rows, zip entries."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.table = np.zeros((0, len(ATTRIBUTES)), dtype=np.int8)
        self.partition: list[str] = []
        self.identity: list[str] = []
        self.images: Path | None = None
        self.next_identity = 0

    @classmethod
    def read(cls, folder: Path) -> "_Base":
        kept = cls()
        attributes = read_attributes(folder / ATTR_FILE)
        kept.names = list(attributes.index)
        kept.table = attributes[list(ATTRIBUTES)].to_numpy(dtype=np.int8)
        kept.partition = _lines(folder / PARTITION_FILE)
        kept.identity = _lines(folder / IDENTITY_FILE)
        kept.next_identity = max(int(line.split()[1]) for line in kept.identity) + 1
        kept.images = folder / IMAGES_ZIP
        return kept


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="ascii").splitlines() if line.strip()]


def _write_images(path: Path, names: list[str], data: SyntheticLabels, seed: int, base: Path | None = None) -> None:
    # One random stream per image (and one shared noise field), so image i never depends on the others.
    noise = noise_field(seed)
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w") as archive:
            if base is not None:
                with zipfile.ZipFile(base) as kept:
                    for info in kept.infolist():
                        archive.writestr(_zip_entry(info.filename), kept.read(info))
            for i, name in enumerate(names):
                row = {attr: bool(data.labels[attr][i]) for attr in ATTRIBUTES}
                look = {key: values[data.person[i]] for key, values in data.people.items()}
                image = render_face(row, look, np.random.default_rng([seed, 1, i]), noise)
                buffer = io.BytesIO()
                image.save(buffer, "JPEG", quality=JPEG_QUALITY)
                archive.writestr(_zip_entry(f"{IMAGES_DIR}/{name}"), buffer.getvalue())


# -- the official text formats ---------------------------------------------------------------
def _attribute_lines(names: list[str], table: np.ndarray) -> list[str]:
    # The real file: count, the names each followed by one space, then the file name and each
    # value right-aligned in width 2 after one space ("000001.jpg -1  1  1 -1 ...").
    lines = [str(len(names)), "".join(f"{attr} " for attr in ATTRIBUTES)]
    lines += [name + "".join(f" {v:2d}" for v in row) for name, row in zip(names, table.tolist())]
    return lines


def _write_crlf(path: Path, lines: list[str]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes("".join(line + "\r\n" for line in lines).encode("ascii"))


def _zip_entry(name: str) -> zipfile.ZipInfo:
    entry = zipfile.ZipInfo(name, date_time=ZIP_TIMESTAMP)
    entry.compress_type = zipfile.ZIP_STORED  # JPEGs do not compress; the real zip stores them too
    entry.create_system = 3  # unix, whatever machine writes it
    entry.external_attr = 0o644 << 16
    return entry
