"""Shared fixtures: the real CelebA files beside the checkout, and small synthetic datasets."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
STRICT = os.environ.get("CI", "").lower() in ("1", "true", "yes") or os.environ.get("FACEATTR_STRICT") == "1"


def require_shared(relative: str) -> Path:
    """Path of `../shared/<relative>`; skip when absent, but fail under CI where it must exist."""
    path = SHARED / relative
    if not path.exists():
        message = f"{path} is absent: real CelebA files live beside the checkout, not in it"
        if STRICT:
            pytest.fail(message + " (CI must run the real-data tests)")
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def celeba_sample() -> Path:
    """4,560 real CelebA images in the official distribution format."""
    return require_shared("celeba-sample")


@pytest.fixture(scope="session")
def celeba_annotations() -> Path:
    """The full official annotation files (202,599 rows)."""
    return require_shared("celeba-annotations")


def _synthetic_root(factory: pytest.TempPathFactory, name: str, n: int, seed: int) -> Path:
    from faceattr.data.download import acquire
    from faceattr.synth.files import generate

    base = factory.mktemp(name)
    generate(base / "source", n=n, seed=seed)
    acquire(str(base / "source"), base / "root")
    return base / "root"


@pytest.fixture(scope="session")
def synth_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder laid out like the official CelebA distribution (zip + label files), 120 images."""
    from faceattr.synth.files import generate

    out = tmp_path_factory.mktemp("synth-source") / "source"
    generate(out, n=120, seed=7)
    return out


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A downloaded dataset ROOT (ROOT/celeba/...) of 300 synthetic images."""
    return _synthetic_root(tmp_path_factory, "synth-root", n=300, seed=1)
