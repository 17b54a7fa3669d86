"""Three weeks of synthetic data for the retraining story (test_retraining*.py).

    week 1   a small labelled set
    week 2   week 1 plus a batch of new identities: more to learn from, a new test split
    week 3   week 2 plus a large batch whose labels were all flipped by accident (all training
             images), so a model trained on it is measurably worse on the clean test images

The models are tiny on purpose (resnet18 from scratch, only its head trained, 1 epoch on the CPU):
the story is about what the registry decides, and these differences are large.
"""
from __future__ import annotations

from pathlib import Path

from faceattr.synth.files import generate

WEEK1, WEEK2_ADDED, WEEK3_ADDED = 64, 160, 320  # official partitions: 53/5/6, +132/13/15, +320/0/0
GATE_MIN_IMAGES = 10  # the test splits here hold about 20 images; the default (200) is for real data
TRAINING = {
    "split": "official", "seed": 0, "arch": "resnet18", "weights": "none", "freeze_children": 9,
    "recalibrate_bn": 0, "epochs": 1, "batch_size": 16, "lr": 3e-3, "device": "cpu", "num_workers": 0,
}


def weekly_sources(folder: Path) -> dict[int, Path]:
    """The source folder of each week, in the official distribution's layout."""
    weeks = {1: folder / "week1", 2: folder / "week2", 3: folder / "week3"}
    generate(weeks[1], n=WEEK1, seed=3)
    generate(weeks[2], n=WEEK2_ADDED, seed=6, base=weeks[1])
    generate(weeks[3], n=WEEK3_ADDED, seed=3, base=weeks[2], corrupt="flip")
    return weeks
