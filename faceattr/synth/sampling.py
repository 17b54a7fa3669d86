"""Labels of a synthetic dataset: people with fixed traits, photos that vary, CelebA's base rates.

Each identity fixes sex, age, face shape, hair colour and style, beard and tastes (glasses,
make-up, tie); each image of an identity varies expression and accessories. Labels follow the
real base rates and the cheap correlations of the real annotations (No_Beard = no goatee, mustache
or full beard; sideburns come with facial hair; bald people have no hair colour and no bangs, and
are not photographed in hats, which would hide the scalp; make-up and lipstick go together and
almost never on men; smiling opens the mouth). Rare drawn attributes sit a little above CelebA's
rates, so that 2,000 images hold enough of each to learn, and a person's traits are drawn by
systematic sampling over the people's photo counts, so that every sample (not just the average
one) holds each trait close to its rate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from faceattr.attributes import ATTRIBUTES
from faceattr.synth.parts import EYE_RGB, EYESHADOW_RGB, LIPSTICK_RGB

MAX_IMAGES = 999_999  # file names have six digits
IMAGES_PER_IDENTITY = 8  # real CelebA has ~20; fewer keeps small sets identity-splittable
PARTITION_SHARES = (0.81, 0.10, 0.09)  # official train / val / test proportions


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
    """The labels, partition and identities `faceattr.synth.files.generate(out, n, seed)` writes; no images drawn."""
    check_counts(n, seed)
    rng = np.random.default_rng([seed, 0])
    k = max(1, math.ceil(n / IMAGES_PER_IDENTITY))
    person = _draw_photos(rng, k, n)
    people = sample_identities(rng, np.bincount(person, minlength=k))
    person, partition = _partition(rng, person, k)
    return SyntheticLabels(_sample_image_labels(rng, people, person), partition, person, people)


def check_counts(n: int, seed: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_IMAGES:
        raise ValueError(f"n: expected a whole number of images from 1 to {MAX_IMAGES}, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: expected a whole number >= 0, got {seed!r}")


def _bernoulli(rng: np.random.Generator, p: np.ndarray | float, size: int) -> np.ndarray:
    return rng.random(size) < p


def _pick(rng: np.random.Generator, p: np.ndarray | float, photos: np.ndarray) -> np.ndarray:
    """Per person, True with probability `p`, spread so that the picked hold close to their expected share of photos.

    Independent coin flips per person let a rare trait held by few people swing from seed to seed
    by about half its rate in images, too few in some samples to learn or to score (README, "Notes
    and measurements"). Systematic sampling down the people sorted by photo count
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


def sample_identities(rng: np.random.Generator, photos: np.ndarray) -> dict[str, np.ndarray]:
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
        "eye_colour": rng.integers(0, len(EYE_RGB), k),
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
