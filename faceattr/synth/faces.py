"""A synthetic face dataset in the official CelebA distribution format, for demos and tests.

This is SYNTHETIC data and never CelebA: cartoon faces drawn with PIL, labelled by construction.
`generate(out, n, seed)` writes exactly the files the official distribution has, byte for byte in
their format (CRLF, count line, header with a trailing space, values right-aligned in width 2):

    out/img_align_celeba.zip     img_align_celeba/000001.jpg ... (178x218 JPEG, quality 90, stored)
    out/list_attr_celeba.txt     count line, the 40 names, "000001.jpg -1  1 ..." rows
    out/list_eval_partition.txt  "000001.jpg 0" rows (0 train, 1 val, 2 test; identity-disjoint)
    out/identity_CelebA.txt      "000001.jpg 2880" rows

so every reader of the real files (faceattr.data.download, faceattr.data.labels) reads it unchanged. The same
seed gives the same bytes in every file. `sample_labels(n, seed)` gives the same labels without
drawing, and `draw_face(attributes, seed)` draws one face with chosen attributes.

How the faces are made: each identity fixes sex, age, skin tone, face shape, hair colour and
style, beard and tastes (glasses, make-up, tie); each image of an identity varies pose, expression
and accessories, over a textured background with noise and uneven lighting. Labels follow the
real base rates and the cheap correlations of the real annotations (No_Beard = no goatee, mustache
or full beard; sideburns come with facial hair; bald people have no hair colour and no bangs, and
are not photographed in hats, which would hide the scalp; make-up and lipstick go together and
almost never on men; smiling opens the mouth). Rare drawn attributes (2-9 % of images) sit up to
2.5 points above CelebA's rates, so that 2,000 images hold enough of each to learn, and a person's
traits are drawn by systematic sampling over the people's photo counts, so that every sample (not
just the average one) holds each trait at its rate: goatees are 7-9 % of 2,000 images on every
seed, where a coin flip per person gave 4-13 %. Faces sit
where aligned CelebA faces sit (eyes at y ~ 108, centred), and the cues stay in the part of the
image that the training augmentation (resize to 220x270, random crop 178x218) always keeps.
Cues that a small model trained for minutes would otherwise miss or mix up are drawn boldly: a
smile lifts the corners of the mouth and creases the cheeks even with the lips closed, earrings
are 14-18 px, gray hair is flecked salt-and-pepper while a bald scalp shines, and a mustache is
a broad walrus over the upper lip, a goatee a full tuft and sideburns wide strips.

DRAWN_ATTRIBUTES lists the attributes drawn plainly enough for a small model to learn. Some others
are drawn subtly (Chubby, Double_Chin, Big_Lips, Big_Nose, Pointy_Nose, Bushy_Eyebrows,
Arched_Eyebrows, Narrow_Eyes, Bags_Under_Eyes, Receding_Hairline, Wavy_Hair, Straight_Hair,
5_o_Clock_Shadow); the rest (Attractive, Young, High_Cheekbones, Oval_Face) are labels only,
correlated with drawn ones the way real labels are.
"""
from __future__ import annotations

import functools
import io
import math
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from faceattr.fsutil import atomic_path
from faceattr.attributes import ATTRIBUTES
from faceattr.data.layout import ATTR_FILE, IDENTITY_FILE, IMAGES_DIR, IMAGES_ZIP, PARTITION_FILE

DRAWN_ATTRIBUTES: tuple[str, ...] = (
    "Bald",
    "Bangs",
    "Black_Hair",
    "Blond_Hair",
    "Blurry",
    "Brown_Hair",
    "Eyeglasses",
    "Goatee",
    "Gray_Hair",
    "Heavy_Makeup",
    "Male",
    "Mouth_Slightly_Open",
    "Mustache",
    "No_Beard",
    "Pale_Skin",
    "Rosy_Cheeks",
    "Sideburns",
    "Smiling",
    "Wearing_Earrings",
    "Wearing_Hat",
    "Wearing_Lipstick",
    "Wearing_Necklace",
    "Wearing_Necktie",
)

WIDTH, HEIGHT = 178, 218
JPEG_QUALITY = 90
MAX_IMAGES = 999_999  # file names have six digits
IMAGES_PER_IDENTITY = 8  # real CelebA has ~20; fewer keeps small sets identity-splittable
PARTITION_SHARES = (0.81, 0.10, 0.09)  # official train / val / test proportions
ZIP_TIMESTAMP = (1980, 1, 1, 0, 0, 0)  # fixed, so the zip's bytes depend only on the seed

# Pixel coordinates relative to the image centre, for the lighting ramp.
_PIXEL_GRID = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
_PIXEL_GRID -= np.array([HEIGHT / 2, WIDTH / 2], np.float32)[:, None, None]

# Gray hair's flecks: the same 60 (angle, radius) spots on every crown.
GRAY_FLECKS = (
    np.radians(np.random.default_rng(0).uniform(205, 335, 60)),
    np.random.default_rng(1).uniform(0.72, 0.96, 60),
)

NOISE_SHAPE = (HEIGHT + 64, WIDTH + 64, 3)
SUPERSAMPLE = 2  # draw at twice the size and downsample: cheap anti-aliasing
FACE_X, FACE_Y = 89.0, 112.0  # centre of the face oval; the eyes sit 4 px above it

HAIR_LABELS = {"black": "Black_Hair", "blond": "Blond_Hair", "brown": "Brown_Hair", "gray": "Gray_Hair"}
HAIR_RGB = {
    "black": (30, 24, 22),
    "blond": (222, 190, 118),
    "brown": (108, 68, 38),
    "gray": (172, 172, 176),
    "other": (176, 68, 30),  # ginger: a colour that carries none of the four labels
}
LIPSTICK_RGB = ((196, 24, 48), (214, 62, 118), (142, 12, 34))
EYESHADOW_RGB = ((112, 52, 140), (48, 80, 170), (70, 40, 30), (20, 20, 24))
ACCESSORY_RGB = (  # hats, ties, clothes: saturated colours
    (200, 30, 30), (30, 90, 200), (30, 150, 60), (230, 180, 20), (120, 40, 160),
    (240, 120, 20), (20, 160, 170), (235, 235, 235), (40, 40, 50),
)


# -- public entry points ---------------------------------------------------------------------
@dataclass(frozen=True)
class SyntheticLabels:
    """Everything about a synthetic dataset except its pixels: labels first, then faces to match."""

    labels: dict[str, np.ndarray]  # attribute -> bool per image, in the official order
    partition: np.ndarray  # per image: 0 train, 1 val, 2 test
    person: np.ndarray  # per image: row in `people`
    people: dict[str, np.ndarray]  # per person: fixed traits and look

    @property
    def table(self) -> np.ndarray:
        """N x 40 int8 of -1/1, as in list_attr_celeba.txt."""
        return np.stack([np.where(self.labels[attr], 1, -1) for attr in ATTRIBUTES], axis=1).astype(np.int8)

    @property
    def identity(self) -> np.ndarray:
        """Per image: the identity number written to identity_CelebA.txt."""
        return self.people["person_id"][self.person]


def sample_labels(n: int, seed: int) -> SyntheticLabels:
    """The labels, partition and identities `generate(out, n, seed)` writes; no images drawn."""
    _check_counts(n, seed)
    rng = np.random.default_rng([seed, 0])
    k = max(1, math.ceil(n / IMAGES_PER_IDENTITY))
    person = _draw_photos(rng, k, n)
    people = _sample_identities(rng, np.bincount(person, minlength=k))
    person, partition = _partition(rng, person, k)
    return SyntheticLabels(_sample_image_labels(rng, people, person), partition, person, people)


def generate(out: Path, n: int, seed: int) -> dict[str, Any]:
    """Write a synthetic dataset of `n` images in the official CelebA layout under `out`.

    Returns a summary: images, identities, partition counts, path, seconds, seed.
    """
    out = Path(out)
    _check_counts(n, seed)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a folder; choose a folder for the synthetic dataset")
    started = time.perf_counter()
    data = sample_labels(n, seed)

    out.mkdir(parents=True, exist_ok=True)
    names = [f"{i + 1:06d}.jpg" for i in range(n)]
    _write_images(out / IMAGES_ZIP, names, data, seed)
    _write_crlf(out / ATTR_FILE, _attribute_lines(names, data.table))
    _write_crlf(out / PARTITION_FILE, [f"{name} {p}" for name, p in zip(names, data.partition)])
    _write_crlf(out / IDENTITY_FILE, [f"{name} {p}" for name, p in zip(names, data.identity)])

    counts = np.bincount(data.partition, minlength=3)
    return {
        "images": n,
        "identities": int(len(np.unique(data.person))),
        "partition": {"train": int(counts[0]), "val": int(counts[1]), "test": int(counts[2])},
        "path": str(out),
        "seed": seed,
        "seconds": round(time.perf_counter() - started, 3),
    }


def draw_face(present: Iterable[str], seed: int = 0) -> Image.Image:
    """One synthetic face showing exactly the attributes named in `present` (the rest absent).

    For demos and tests: the person's look and the photo's pose, light and noise come from
    `seed`, so the same seed with one attribute added differs only where that attribute is drawn.
    The caller keeps the names consistent (a beard without "No_Beard", one hair colour, ...).
    """
    present = set(present)
    unknown = sorted(present - set(ATTRIBUTES))
    if unknown:
        raise ValueError(f"draw_face: unknown attribute(s) {', '.join(unknown)}; see faceattr.data.labels.ATTRIBUTES")
    people = _sample_identities(np.random.default_rng([seed, 3]), np.ones(1, np.int64))
    look = {key: values[0] for key, values in people.items()}
    look["long_hair"] = "Male" not in present
    row = {attr: attr in present for attr in ATTRIBUTES}
    noise = np.random.default_rng([seed, 2]).standard_normal(NOISE_SHAPE, dtype=np.float32)
    return _render_face(row, look, np.random.default_rng([seed, 1]), noise)


def _check_counts(n: int, seed: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_IMAGES:
        raise ValueError(f"n: expected a whole number of images from 1 to {MAX_IMAGES}, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: expected a whole number >= 0, got {seed!r}")


def _write_images(path: Path, names: list[str], data: SyntheticLabels, seed: int) -> None:
    # One random stream per image (and one shared noise field), so image i never depends on the others.
    noise = np.random.default_rng([seed, 2]).standard_normal(NOISE_SHAPE, dtype=np.float32)
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w") as archive:
            for i, name in enumerate(names):
                row = {attr: bool(data.labels[attr][i]) for attr in ATTRIBUTES}
                look = {key: values[data.person[i]] for key, values in data.people.items()}
                image = _render_face(row, look, np.random.default_rng([seed, 1, i]), noise)
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


# -- labels ----------------------------------------------------------------------------------
def _bernoulli(rng: np.random.Generator, p: np.ndarray | float, size: int) -> np.ndarray:
    return rng.random(size) < p


def _pick(rng: np.random.Generator, p: np.ndarray | float, photos: np.ndarray) -> np.ndarray:
    """Per person, True with probability `p`, spread so that the picked hold close to their expected share of photos.

    Independent coin flips per person let a rare trait held by few people swing from seed to seed
    by half its rate in images (goatee: 4 to 13 % of 2,000 images where 8 % is meant), too few in
    some samples to learn or to score. Systematic sampling down the people sorted by photo count
    keeps each person's probability exactly and takes people with few and many photos evenly.
    """
    p = np.broadcast_to(np.asarray(p, dtype=np.float64), photos.shape)
    order = np.lexsort((rng.random(len(photos)), photos))
    # Picked: the people whose stretch of the cumulative probability holds a point u, u + 1, u + 2, ...
    reached = np.floor(np.cumsum(p[order]) + 1 - rng.random())
    picked = np.empty(len(photos), dtype=bool)
    picked[order] = np.diff(reached, prepend=0) > 0
    return picked


def _pick_category(rng: np.random.Generator, probs: np.ndarray, photos: np.ndarray) -> np.ndarray:
    """Per person, a category index drawn with the row's probabilities, spread as `_pick` spreads."""
    choice = np.full(len(photos), probs.shape[1] - 1)
    undecided, mass_left = np.ones(len(photos), dtype=bool), np.ones(len(photos))
    for category in range(probs.shape[1] - 1):
        # P(category | not an earlier one) = p / mass left, so each person's chance is the row's.
        share = np.divide(probs[:, category], mass_left, out=np.zeros(len(photos)), where=mass_left > 1e-12)
        chosen = _pick(rng, np.where(undecided, np.clip(share, 0, 1), 0), photos)
        choice[chosen] = category
        undecided &= ~chosen
        mass_left = mass_left - probs[:, category]
    return choice


# P(sideburns) per beard style (none, full, goatee, mustache, both), from CelebA's annotations.
SIDEBURNS_BY_BEARD = np.array([0.0, 0.23, 0.47, 0.20, 0.59])


def _sample_identities(rng: np.random.Generator, photos: np.ndarray) -> dict[str, np.ndarray]:
    """Traits fixed per person (given each person's photo count): labels that stay, and the look."""
    k = len(photos)

    def pick(p: np.ndarray | float) -> np.ndarray:
        return _pick(rng, p, photos)

    male = pick(0.42)
    young = pick(np.where(male, 0.63, 0.87))
    bald = pick(np.where(male, np.where(young, 0.04, 0.2), 0))

    # Hair colour: [black, blond, brown, gray, other]; gray mostly for the old.
    gray = np.where(young, 0.005, np.where(male, 0.35, 0.12))
    blond = np.where(male, 0.03, 0.25)
    black, brown = np.full(k, 0.25), np.full(k, 0.21)
    probs = np.stack([black, blond, brown, gray, np.clip(1 - black - blond - brown - gray, 0, 1)], axis=1)
    hair = _pick_category(rng, probs / probs.sum(1, keepdims=True), photos)

    has_hair = ~bald
    bangs = pick(np.where(has_hair, np.where(male, 0.08, 0.21), 0))
    receding = pick(np.where(has_hair & ~bangs, np.where(male, np.where(young, 0.06, 0.3), 0.04), 0))
    style = rng.random(k)
    wavy = has_hair & (style < 0.33)
    straight = has_hair & (style >= 0.33) & (style < 0.55)
    long_hair = pick(np.where(has_hair, np.where(male, 0.08, 0.9), 0))

    chubby = pick(np.where(young, np.where(male, 0.05, 0.02), np.where(male, 0.15, 0.08)))
    # Beard styles for men: 0 none, 1 full beard (no goatee/mustache label), 2 goatee, 3 mustache, 4 both.
    # Goatee and mustache near the top of CelebA's rates (see the module docstring): they belong to few people.
    # Full beards (only No_Beard says so) are 5 % of images, so No_Beard keeps CelebA's 83.5 %.
    beard_styles = np.where(male[:, None], [0.61, 0.11, 0.13, 0.08, 0.07], [1.0, 0, 0, 0, 0])
    beard = _pick_category(rng, beard_styles, photos)
    return {
        # Real identity numbers run 1..10177 in no particular order.
        "person_id": rng.choice(np.arange(1, max(10177, k) + 1), size=k, replace=False),
        "male": male,
        "young": young,
        "bald": bald,
        "hair": hair,
        "bangs": bangs,
        "receding": receding,
        "wavy": wavy,
        "straight": straight,
        "long_hair": long_hair,
        "chubby": chubby,
        "double_chin": pick(np.where(chubby, 0.55, 0.02)),
        "oval": pick(np.where(chubby, 0, 0.3)),
        "big_nose": pick(np.where(male, 0.38, 0.13)),
        "pointy_nose": pick(np.where(male, 0.2, 0.34)),
        "big_lips": pick(0.24),
        "narrow_eyes": pick(0.11),
        "bushy_brows": pick(np.where(male, 0.25, 0.07)),
        "arched_brows": pick(np.where(male, 0.05, 0.42)),
        "bags": pick(np.where(young, 0.15, 0.4)),
        "attractive": pick(np.where(male, np.where(young, 0.33, 0.15), np.where(young, 0.75, 0.45))),
        "pale": pick(np.where(male, 0.04, 0.08)),
        "beard": beard,
        # Sideburns come with facial hair, at CelebA's rate per beard style (0.2 % of its clean-shaven men: none here).
        "sideburns": pick(SIDEBURNS_BY_BEARD[beard]),
        # tastes: how likely this person is to wear something in a given photo
        "wears_glasses": pick(0.095),
        "wears_makeup": pick(np.where(male, 0, 0.75)),
        "wears_lipstick": pick(np.where(male, 0, 0.85)),
        "wears_tie": pick(np.where(male, 0.38, 0)),
        # look
        "skin_tone": rng.random(k),  # 0 dark .. 1 light (pale skin is drawn apart)
        "face_width": rng.normal(0, 1.5, k),
        "hair_jitter": rng.integers(-12, 13, (k, 3)),
        "eye_colour": rng.integers(0, 3, k),
        "lipstick": rng.integers(0, len(LIPSTICK_RGB), k),
        "eyeshadow": rng.integers(0, len(EYESHADOW_RGB), k),
    }


def _draw_photos(rng: np.random.Generator, k: int, n: int) -> np.ndarray:
    """Each image's person (0..k-1): some people have many photos, some few."""
    popularity = rng.gamma(2.0, 1.0, k)
    return rng.choice(k, size=n, p=popularity / popularity.sum())


def _partition(rng: np.random.Generator, person: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """An identity-disjoint partition ordered train, val, test like the real one; images reordered to match."""
    n = len(person)
    # Walk the people in random order; each goes to the partition its middle image falls in.
    counts = np.bincount(person, minlength=k)
    order = rng.permutation(k)
    middle = (np.cumsum(counts[order]) - counts[order] / 2) / n
    person_partition = np.empty(k, dtype=np.int64)
    person_partition[order] = np.searchsorted(np.cumsum(PARTITION_SHARES)[:2], middle, side="right")
    partition = person_partition[person]

    # Image numbers: all train images first, then val, then test (as in the official files).
    arrange = np.lexsort((rng.random(n), partition))
    return person[arrange], partition[arrange]


def _sample_image_labels(
    rng: np.random.Generator, people: dict[str, np.ndarray], person: np.ndarray
) -> dict[str, np.ndarray]:
    """The 40 labels per image: the person's fixed traits plus what varies from photo to photo."""
    p = {key: values[person] for key, values in people.items()}
    n = len(person)
    male, female = p["male"], ~p["male"]

    smiling = _bernoulli(rng, 0.48, n)
    heavy_makeup = p["wears_makeup"] & _bernoulli(rng, 0.88, n) | female & _bernoulli(rng, 0.03, n)
    lipstick_p = np.where(heavy_makeup, 0.98, np.where(p["wears_lipstick"], 0.65, np.where(female, 0.1, 0.0)))
    beard = p["beard"]
    goatee, mustache = (beard == 2) | (beard == 4), (beard == 3) | (beard == 4)
    hair = np.where(p["bald"], -1, p["hair"])

    labels = {
        "5_o_Clock_Shadow": male & (beard != 1) & _bernoulli(rng, 0.33, n),
        "Arched_Eyebrows": p["arched_brows"],
        "Attractive": p["attractive"],
        "Bags_Under_Eyes": p["bags"],
        "Bald": p["bald"],
        "Bangs": p["bangs"],
        "Big_Lips": p["big_lips"],
        "Big_Nose": p["big_nose"],
        "Black_Hair": hair == 0,
        "Blond_Hair": hair == 1,
        "Blurry": _bernoulli(rng, 0.07, n),
        "Brown_Hair": hair == 2,
        "Bushy_Eyebrows": p["bushy_brows"],
        "Chubby": p["chubby"],
        "Double_Chin": p["double_chin"],
        "Eyeglasses": _bernoulli(rng, np.where(p["wears_glasses"], 0.85, 0.005), n),
        "Goatee": goatee,
        "Gray_Hair": hair == 3,
        "Heavy_Makeup": heavy_makeup,
        "High_Cheekbones": _bernoulli(rng, np.where(smiling, 0.81, 0.13), n),
        "Male": male,
        "Mouth_Slightly_Open": _bernoulli(rng, np.where(smiling, 0.76, 0.22), n),
        "Mustache": mustache,
        "Narrow_Eyes": p["narrow_eyes"],
        "No_Beard": beard == 0,
        "Oval_Face": p["oval"],
        "Pale_Skin": p["pale"],
        "Pointy_Nose": p["pointy_nose"],
        "Receding_Hairline": p["receding"],
        "Rosy_Cheeks": _bernoulli(rng, np.where(male, 0.003, np.where(heavy_makeup, 0.18, 0.08)), n),
        "Sideburns": p["sideburns"],
        "Smiling": smiling,
        "Straight_Hair": p["straight"],
        "Wavy_Hair": p["wavy"],
        "Wearing_Earrings": _bernoulli(rng, np.where(male, 0.016, 0.31), n),
        # Annotators label what they see: CelebA has 0.5 % of bald faces in a hat (8 % of men).
        "Wearing_Hat": _bernoulli(rng, np.where(p["bald"], 0.005, 0.07), n),
        "Wearing_Lipstick": _bernoulli(rng, lipstick_p, n),
        "Wearing_Necklace": _bernoulli(rng, np.where(male, 0.01, 0.24), n),
        "Wearing_Necktie": p["wears_tie"] & _bernoulli(rng, 0.55, n),
        "Young": p["young"],
    }
    assert tuple(labels) == ATTRIBUTES, "labels must be built in the official order"
    return labels


# -- drawing ---------------------------------------------------------------------------------
def _mix(a: tuple[int, ...], b: tuple[int, ...], t: float) -> tuple[int, int, int]:
    return tuple(int(round(x + (y - x) * t)) for x, y in zip(a, b))


def _shade(colour: tuple[int, ...], factor: float) -> tuple[int, int, int]:
    return tuple(int(min(255, max(0, round(c * factor)))) for c in colour)


def _contrast(colour: tuple[int, ...], against: tuple[int, ...], minimum: int = 70) -> tuple[int, int, int]:
    """`colour`, darkened until it differs from `against` by `minimum` in some channel (hair on skin)."""
    for _ in range(8):
        if max(abs(a - b) for a, b in zip(colour, against)) >= minimum:
            break
        colour = _shade(colour, 0.8)
    return colour


def _oval(cx: float, cy: float, rx: float, ry: float, start: float = 0.0, end: float = 360.0, steps: int = 36):
    """Points of an ellipse arc (degrees; 0 = right, 90 = down, as in PIL)."""
    return _unit_arc(start, end, steps) * (rx, ry) + (cx, cy)


@functools.lru_cache(maxsize=None)
def _unit_arc(start: float, end: float, steps: int) -> np.ndarray:
    # A handful of arcs are drawn thousands of times: compute each one once.
    t = np.radians(np.linspace(start, end, steps, endpoint=end - start < 360))
    arc = np.stack([np.cos(t), np.sin(t)], axis=1)
    arc.flags.writeable = False
    return arc


class _Pen:
    """Draws in face coordinates (a 178x218 frame) through one pose: rotation, scale and shift."""

    def __init__(self, image: Image.Image, angle: float, scale: float, shift: tuple[float, float]):
        self.draw = ImageDraw.Draw(image)
        cos, sin = math.cos(angle) * scale, math.sin(angle) * scale
        self.matrix = np.array([[cos, -sin], [sin, cos]]) * SUPERSAMPLE
        self.origin = (np.array([FACE_X + shift[0], FACE_Y + shift[1]])) * SUPERSAMPLE
        self.scale = scale

    def _xy(self, points: np.ndarray | list) -> list[float]:
        points = np.asarray(points, dtype=float) - (FACE_X, FACE_Y)
        return (points @ self.matrix.T + self.origin).ravel().tolist()

    def width(self, w: float) -> int:
        return max(1, round(w * SUPERSAMPLE * self.scale))

    def polygon(self, points, fill, outline=None) -> None:
        self.draw.polygon(self._xy(points), fill=fill, outline=outline, width=self.width(1.0) if outline else 1)

    def line(self, points, fill, width: float) -> None:
        self.draw.line(self._xy(points), fill=fill, width=self.width(width), joint="curve")

    def oval(self, cx, cy, rx, ry, fill=None, outline=None, width: float = 1.0) -> None:
        points = _oval(cx, cy, rx, ry)
        if fill is not None:
            self.polygon(points, fill)
        if outline is not None:
            self.line(np.vstack([points, points[:1]]), outline, width)

    def dots(self, points: np.ndarray, fill, radius: float) -> None:
        for x, y in np.asarray(self._xy(points)).reshape(-1, 2):
            r = radius * SUPERSAMPLE * self.scale
            self.draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)


def _background(rng: np.random.Generator) -> Image.Image:
    """A smooth random colour field with a few flat shapes: clutter the model must learn to ignore."""
    # Muted colours: a grey level plus a little hue, like rooms and sky rather than paint.
    grey = rng.uniform(40, 215)
    field = np.clip(grey + rng.normal(0, 45, (4, 3, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(field, "RGB").resize((WIDTH, HEIGHT), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(2, 6)):
        x, y = rng.integers(0, WIDTH), rng.integers(0, HEIGHT)
        w, h = rng.integers(10, 70, 2)
        colour = tuple(int(c) for c in np.clip(rng.uniform(30, 225) + rng.normal(0, 40, 3), 0, 255))
        box = (x - w, y - h, x + w, y + h)
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    # The background needs no anti-aliasing: enlarge it to the drawing size the cheap way.
    return image.resize((WIDTH * SUPERSAMPLE, HEIGHT * SUPERSAMPLE), Image.Resampling.NEAREST)


def _render_face(
    row: dict[str, bool], look: dict[str, Any], rng: np.random.Generator, noise: np.ndarray
) -> Image.Image:
    """Draw one 178x218 RGB face showing the attributes in `row` for the person in `look`.

    `noise` is a unit Gaussian field larger than the image; each image takes a random window.
    Everything drawn for every face is sampled first, so an attribute's own random choices
    (a hat's colour, ...) never move the pose, the light or the noise.
    """
    image = _background(rng)
    pen = _Pen(
        image,
        angle=math.radians(float(np.clip(rng.normal(0, 5), -10, 10))),
        scale=float(np.clip(rng.normal(1.0, 0.03), 0.94, 1.06)),
        shift=tuple(np.clip(rng.normal(0, 2.5, 2), -5, 5)),
    )
    camera = _sample_camera(rng)
    clothes = ACCESSORY_RGB[rng.integers(len(ACCESSORY_RGB))]
    gaze = float(rng.normal(0, 1.2))
    cx, cy = FACE_X, FACE_Y

    # Colours of this person.
    if row["Pale_Skin"]:
        skin = _mix((246, 226, 214), (255, 236, 228), float(look["skin_tone"]))
    else:
        skin = _mix((92, 58, 40), (226, 184, 156), float(look["skin_tone"]))
    hair_name = next((name for name, attr in HAIR_LABELS.items() if row[attr]), "other")
    hair = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(HAIR_RGB[hair_name], look["hair_jitter"]))
    hair = _contrast(hair, skin, 50)
    if row["Bald"]:
        brow = _shade(skin, 0.45)
    else:
        brow = _shade(hair, 0.55) if hair_name in ("blond", "gray") else _shade(hair, 0.8)
    long_hair = bool(look["long_hair"]) and not row["Bald"]

    fw = 40 + float(look["face_width"]) + (7 if row["Chubby"] else 0) - (3 if row["Oval_Face"] else 0)
    fh = 54 + (3 if row["Oval_Face"] else 0)
    jaw = 0.9 if row["Male"] else 0.76  # how wide the chin stays: men squarer

    # Clothes and long hair behind the head, then the neck.
    pen.polygon([(-20, 230), (-5, 194), (50, 178), (128, 178), (183, 194), (198, 230)], clothes)
    if long_hair:
        top = _oval(cx, cy - 6, fw + 10, fh + 12, 180, 360, 24)
        # The sides fall from the temples to the shoulders; wavy hair gets a rippled edge.
        ys = np.linspace(cy - 6, 200, 16)
        spread = 10 + 4 * (ys - ys[0]) / (ys[-1] - ys[0])
        if row["Wavy_Hair"]:
            spread = spread + 4 * np.sin((ys - ys[0]) / 5)
        right = np.stack([cx + fw + spread, ys], 1)
        left = np.stack([cx - fw - spread, ys], 1)[::-1]
        pen.polygon(np.vstack([top, right, left]), hair, outline=_shade(hair, 0.6))
    pen.polygon([(cx - 15, cy + 30), (cx + 15, cy + 30), (cx + 17, 188), (cx - 17, 188)], _shade(skin, 0.88))

    # Neck wear sits just under the chin, inside the part that every training crop keeps.
    if row["Wearing_Necktie"]:
        tie = ACCESSORY_RGB[rng.integers(len(ACCESSORY_RGB) - 2)]  # not white or black
        collar = [(cx - 26, 172), (cx - 20, 158), (cx, 172), (cx + 20, 158), (cx + 26, 172), (cx, 186)]
        pen.polygon(collar, (240, 240, 240), outline=(40, 40, 40))  # outlined: it shows on a white shirt too
        # The knot sits high, inside every training crop; the blade runs down past the crop.
        pen.polygon([(cx - 10, 158), (cx + 10, 158), (cx + 7, 173), (cx - 7, 173)], _shade(tie, 0.7), outline=(20, 20, 20))
        pen.polygon([(cx - 7, 173), (cx + 7, 173), (cx + 13, 212), (cx, 222), (cx - 13, 212)], tie, outline=(20, 20, 20))
    if row["Wearing_Necklace"]:
        metal = ((232, 196, 70), (225, 225, 235), (250, 248, 240))[rng.integers(3)]
        beads = _oval(cx, 156, 18, 13, 10, 170, 13)
        pen.dots(beads, _shade(metal, 0.4), 3.8)  # a dark rim: pale beads show on pale skin too
        pen.dots(beads, metal, 2.9)

    # Ears, then the face oval with a jaw that narrows towards the chin.
    for sign in (-1, 1):
        pen.oval(cx + sign * (fw + 2), cy + 6, 6, 12, fill=_shade(skin, 0.92))
    pen.polygon(_face_outline(fw, fh, jaw), skin)
    if row["Bald"]:  # the scalp shines where hair would be: no hair colour is this bright
        pen.oval(cx - 6, cy - fh + 15, 24, 11, fill=_mix(skin, (255, 255, 255), 0.6))
        pen.oval(cx - 9, cy - fh + 13, 13, 5, fill=(255, 255, 252))
    if row["Double_Chin"]:
        pen.line(_oval(cx, cy + fh - 4, 14, 5, 20, 160, 10), _shade(skin, 0.75), 1.5)
    if row["5_o_Clock_Shadow"]:  # stubble: a stipple of dark dots over the jaw
        angles = rng.uniform(0.15, 0.85, 140) * math.pi
        radii = rng.uniform(0.55, 0.97, 140)
        stubble = np.stack([cx + fw * jaw * radii * np.cos(angles), cy + 14 + (fh - 14) * radii * np.sin(angles)], 1)
        pen.dots(stubble, _shade(skin, 0.55), 0.7)
    if row["Rosy_Cheeks"]:
        for sign in (-1, 1):
            pen.oval(cx + sign * 24, cy + 16, 10, 6.5, fill=_mix(skin, (236, 70, 92), 0.9))

    if row["Eyeglasses"]:  # tinted lenses behind the eyes; the frames go on last, over the hair
        frame = ((16, 16, 16), (64, 38, 20), (36, 36, 64), (120, 20, 30))[rng.integers(4)]
        sunglasses = rng.random() < 0.3
        for sign in (-1, 1):
            pen.oval(cx + sign * 19, cy - 4, 13, 9, fill=_mix(skin, (200, 222, 248), 0.5))
    _draw_eyes(pen, row, look, skin, brow, gaze)
    _draw_nose(pen, row, skin)
    _draw_mouth(pen, row, look, skin)
    _draw_facial_hair(pen, row, fw, fh, jaw, _shade(skin, 0.35) if row["Bald"] else hair, skin)
    if not row["Bald"]:
        _draw_hair_on_top(pen, row, fw, fh, long_hair, hair)

    if row["Wearing_Hat"]:
        colour = ACCESSORY_RGB[rng.integers(len(ACCESSORY_RGB))]
        band = ACCESSORY_RGB[rng.integers(len(ACCESSORY_RGB))]
        pen.polygon(_oval(cx, cy - 42, fw + 8, 44, 180, 360, 24), colour)
        left, right = cx - fw - 8, cx + fw + 8
        pen.polygon([(left, cy - 46), (right, cy - 46), (right, cy - 40), (left, cy - 40)], band)
        pen.oval(cx, cy - 40, fw + 20, 6, fill=_shade(colour, 0.75))  # the brim

    if row["Wearing_Earrings"]:
        metal = ((236, 200, 60), (226, 226, 236))[rng.integers(2)]
        hoops = rng.random() < 0.5
        for sign in (-1, 1):
            x = cx + sign * (fw + 3)
            # Big (14-18 px) and dark-rimmed, so gold shows on blond hair and silver on grey.
            if hoops:
                pen.oval(x, cy + 28, 7.5, 9, outline=_shade(metal, 0.4), width=4.0)
                pen.oval(x, cy + 28, 7.5, 9, outline=metal, width=2.4)
            else:  # a stud with a drop below it
                pen.oval(x, cy + 21, 4, 4, fill=metal, outline=_shade(metal, 0.4), width=1.2)
                pen.oval(x, cy + 31, 4.5, 6.5, fill=metal, outline=_shade(metal, 0.4), width=1.2)

    if row["Eyeglasses"]:
        for sign in (-1, 1):
            x = cx + sign * 19
            pen.oval(x, cy - 4, 13, 9, fill=(22, 24, 32) if sunglasses else None, outline=frame, width=3.5)
            pen.line([(x - 6, cy - 1), (x - 2, cy - 9)], (236, 236, 244), 1.5)  # glare on the lens
            pen.line([(cx + sign * 32, cy - 6), (cx + sign * (fw + 1), cy - 8)], frame, 2.5)
        pen.line([(cx - 6, cy - 6), (cx, cy - 8), (cx + 6, cy - 6)], frame, 2.5)

    return _finish(image.reduce(SUPERSAMPLE), row["Blurry"], camera, noise)


def _face_outline(fw: float, fh: float, jaw: float) -> np.ndarray:
    face = _oval(FACE_X, FACE_Y, fw, fh, 0, 360, 48)
    below = np.clip((face[:, 1] - FACE_Y) / fh, 0, 1)
    face[:, 0] = FACE_X + (face[:, 0] - FACE_X) * (1 - (1 - jaw) * below**2)
    return face


def _draw_hair_on_top(pen: _Pen, row, fw: float, fh: float, long_hair: bool, hair) -> None:
    """Hair over the crown: the hairline is higher when receding, a jagged fringe for bangs."""
    cx, cy = FACE_X, FACE_Y
    crown = _oval(cx, cy - 4, fw + 5, fh + 14, 180, 360, 28)
    side_low = cy + (20 if long_hair else -6)
    xs = np.linspace(cx + fw - 5, cx - fw + 5, 15)
    if row["Bangs"]:
        ys = cy - 24 + 4 * (np.arange(15) % 2)  # down to the eyebrows
    else:
        ys = cy - (34 if row["Receding_Hairline"] else 42) + 22 * ((xs - cx) / fw) ** 2
    hairline = np.stack([xs, ys], 1)
    right = [(cx + fw + 5, side_low), (cx + fw - 4, side_low)]
    left = [(cx - fw + 4, side_low), (cx - fw - 5, side_low)]
    pen.polygon(np.vstack([crown, right, hairline, left]), hair, outline=_shade(hair, 0.6))
    if row["Gray_Hair"]:  # salt and pepper: dark flecks, a texture that neither a bald scalp nor other hair has
        pen.dots(_fleck_points(fw, fh), _shade(hair, 0.45), 1.0)
    if row["Straight_Hair"]:  # combed strands
        for x in np.linspace(cx - fw + 12, cx + fw - 12, 6):
            pen.line([(x, cy - fh - 8), (x + (x - cx) * 0.15, cy - 46)], _shade(hair, 0.8), 1)


def _fleck_points(fw: float, fh: float) -> np.ndarray:
    # A fixed scatter over the crown, between the hairline and the top of the head.
    angle, radius = GRAY_FLECKS
    return np.stack([FACE_X + (fw + 5) * radius * np.cos(angle), FACE_Y - 4 + (fh + 14) * radius * np.sin(angle)], 1)


def _draw_eyes(pen: _Pen, row, look, skin, brow, gaze: float) -> None:
    cx, cy = FACE_X, FACE_Y
    eye_y = cy - 4
    open_height = 1.8 if row["Narrow_Eyes"] else 3.8
    if row["Smiling"]:
        open_height *= 0.8
    iris = ((60, 40, 25), (50, 90, 140), (70, 110, 60))[int(look["eye_colour"])]
    for sign in (-1, 1):
        x = cx + sign * 19
        if row["Heavy_Makeup"]:
            pen.oval(x, eye_y - 2, 11, 6, fill=EYESHADOW_RGB[int(look["eyeshadow"])])
        if row["Bags_Under_Eyes"]:
            pen.line(_oval(x, eye_y + 3, 7, 4, 20, 160, 8), _shade(skin, 0.72), 1.2)
        pen.oval(x, eye_y, 7, open_height, fill=(240, 240, 236))
        pen.oval(x + gaze, eye_y, min(3.0, open_height), min(3.0, open_height), fill=iris)
        pen.line(_oval(x, eye_y, 7, open_height, 180, 360, 10), (30, 20, 20), 1.6 if row["Heavy_Makeup"] else 1.0)
        # eyebrows: thick when bushy, a peaked arc when arched
        thickness = 4.0 if row["Bushy_Eyebrows"] else 2.0
        lift = 6 if row["Arched_Eyebrows"] else 2.5
        inner, outer = x - sign * 9, x + sign * 11
        pen.line([(inner, eye_y - 10), (x + sign * 2, eye_y - 10 - lift), (outer, eye_y - 8)], brow, thickness)


def _draw_nose(pen: _Pen, row, skin) -> None:
    cx, cy = FACE_X, FACE_Y
    half = 8.0 if row["Big_Nose"] else 5.5
    tip = cy + (20 if row["Big_Nose"] else 17)
    point = 3 if row["Pointy_Nose"] else 0
    outline = [(cx - 2, cy - 4), (cx + 2, cy - 4), (cx + half, tip), (cx, tip + 2 + point), (cx - half, tip)]
    pen.polygon(outline, _shade(skin, 0.88))
    for sign in (-1, 1):
        pen.oval(cx + sign * half * 0.45, tip - 0.5, 1.8, 1.1, fill=_shade(skin, 0.45))


def _draw_mouth(pen: _Pen, row, look, skin) -> None:
    cx, y = FACE_X, FACE_Y + 32
    if row["Wearing_Lipstick"]:
        lips = LIPSTICK_RGB[int(look["lipstick"])]
    else:
        lips = _mix(_shade(skin, 0.8), (170, 80, 80), 0.35)
    thick = 4.5 if row["Big_Lips"] else 2.8
    is_open = row["Mouth_Slightly_Open"]
    if row["Smiling"]:
        # A wide crescent with raised corners and a crease beside each: plain even with the lips closed.
        half = 18.0
        arc = np.sin(np.linspace(0, math.pi, 13))
        upper = np.stack([np.linspace(cx - half, cx + half, 13), y - 7 + 5 * arc], 1)
        sag = 14 if is_open else 11
        lower = np.stack([np.linspace(cx + half, cx - half, 13), y - 7 + sag * arc], 1)
        for sign in (-1, 1):
            crease = _oval(cx + sign * (half - 1), y - 7, 5, 8, 90 - sign * 90, 90 + sign * 30 - sign * 90, 6)
            pen.line(crease, _shade(skin, 0.5), 1.8)
        if is_open:
            pen.polygon(np.vstack([upper, lower]), (70, 20, 24))
            teeth = np.stack([upper[:, 0], upper[:, 1] + 3.5], 1)[::-1]
            pen.polygon(np.vstack([upper, teeth]), (245, 245, 240))
            pen.line(upper, lips, thick * 0.7)
            pen.line(lower, lips, thick)
        else:
            pen.polygon(np.vstack([upper, lower]), lips)
            pen.line(np.vstack([upper[:1], lower[6:7] - (0, thick), upper[-1:]]), _shade(lips, 0.6), 1)
    else:
        half = 12.0
        if is_open:
            pen.oval(cx, y + 2, half - 2, 6, fill=(70, 20, 24))
            pen.oval(cx, y + 2, half, 6 + thick * 0.4, outline=lips, width=thick * 0.8)
        else:
            pen.oval(cx, y, half, thick, fill=lips)
            pen.line([(cx - half, y), (cx, y + 0.6), (cx + half, y)], _shade(lips, 0.55), 1)


def _draw_facial_hair(pen: _Pen, row, fw, fh, jaw, colour, skin) -> None:
    cx, cy = FACE_X, FACE_Y
    # Facial hair is a small cue on few people: drawn in a colour well apart from the skin.
    beard_colour = _contrast(_shade(colour, 0.75), skin, 110)
    if not row["No_Beard"] and not (row["Goatee"] or row["Mustache"]):
        # full beard: the lower face from ear to ear around the mouth
        outer = _oval(cx, cy, fw, fh, 0, 180, 20)
        below = np.clip((outer[:, 1] - cy) / fh, 0, 1)
        outer[:, 0] = cx + (outer[:, 0] - cx) * (1 - (1 - jaw) * below**2)
        outer[:, 1] += 3
        inner = _oval(cx, cy + 30, 20, 12, 180, 0, 12)
        jaw_line = outer[outer[:, 1] > cy + 8]
        pen.polygon(np.vstack([jaw_line, [(cx - fw + 6, cy + 12)], inner, [(cx + fw - 6, cy + 12)]]), beard_colour)
    # Mustache and goatee carry combed strands, so that they read as hair and not as a dark mouth.
    strands = _mix(beard_colour, skin, 0.45)
    if row["Mustache"]:
        # A broad walrus mustache over the upper lip, its ends past the corners of a smile.
        pen.polygon([(cx - 28, cy + 36), (cx - 14, cy + 18), (cx, cy + 20), (cx + 14, cy + 18), (cx + 28, cy + 36),
                     (cx, cy + 30)], beard_colour)
        for x in (4.0, 9.0, 14.0, 19.0, 24.0):
            for sign in (-1, 1):
                pen.line([(cx + sign * x, cy + 21), (cx + sign * (x + 3), cy + 29)], strands, 1)
    if row["Goatee"]:
        # A tuft from below the lower lip (clear of an open mouth) to past the chin.
        chin = _oval(cx, cy + 48, 17, 21, 180, 0, 10)
        pen.polygon(np.vstack([[(cx - 15, cy + 43)], chin, [(cx + 15, cy + 43)]]), beard_colour)
        for x in (-8.0, -4.0, 0.0, 4.0, 8.0):
            pen.line([(cx + x, cy + 46), (cx + x * 0.6, cy + 62)], strands, 1)
    if row["Sideburns"]:
        for sign in (-1, 1):
            x = cx + sign * (fw - 3)
            strip = [(x - 6, cy - 26), (x + 6, cy - 26), (x + 6 - sign * 3, cy + 26), (x - 6 - sign * 3, cy + 26)]
            pen.polygon(strip, beard_colour)


def _sample_camera(rng: np.random.Generator) -> dict[str, float]:
    return {
        "blur": rng.uniform(2.2, 3.5),  # Gaussian radius, for Blurry images only
        "light_level": rng.uniform(0.85, 1.12),
        "light_slope": rng.uniform(0, 0.35),  # uneven light across the image
        "light_direction": rng.uniform(0, 2 * math.pi),
        "noise_sigma": rng.uniform(2, 7),
        "noise_top": rng.integers(0, NOISE_SHAPE[0] - HEIGHT + 1),
        "noise_left": rng.integers(0, NOISE_SHAPE[1] - WIDTH + 1),
    }


def _finish(image: Image.Image, blurry: bool, camera: dict[str, float], noise: np.ndarray) -> Image.Image:
    """Camera effects: blur for Blurry images, then uneven light and sensor noise on every image."""
    if blurry:
        image = image.filter(ImageFilter.GaussianBlur(float(camera["blur"])))
    pixels = np.asarray(image, dtype=np.float32)
    ys, xs = _PIXEL_GRID
    direction = camera["light_direction"]
    ramp = (xs * math.cos(direction) + ys * math.sin(direction)) / WIDTH
    light = np.float32(camera["light_level"]) + np.float32(camera["light_slope"]) * ramp
    pixels *= light[..., None]
    # A window of the shared noise field: fresh noise per image would cost more than the face.
    top, left = camera["noise_top"], camera["noise_left"]
    pixels += np.float32(camera["noise_sigma"]) * noise[top : top + HEIGHT, left : left + WIDTH]
    return Image.fromarray(np.clip(pixels, 0, 255, out=pixels).astype(np.uint8), "RGB")
