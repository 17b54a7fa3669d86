"""What every test module shares: the real CelebA files beside the checkout, synthetic datasets,
the machine's PostgreSQL, torch's thread count, and the marker rules.

Markers: `realdata` for every test that reads ../shared, `services` for tests that need the
machine's PostgreSQL or Redis (both checked at collection for the fixtures that need them), `slow`
for tests that train or run Airflow end to end, `cuda` for tests that need a GPU.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator

import pytest

from support import postgres_database, require_shared

# The marker a test needs when it uses the fixture: `-m "not realdata"` and `-m "not services"` must
# deselect every test that would otherwise skip or fail for want of the files or the server.
FIXTURE_MARKERS = {"celeba_sample": "realdata", "celeba_annotations": "realdata", "postgres_url": "services"}
TORCH_THREADS = 2  # the test machines' cores are shared: more threads only contend


# FACEATTR_REQUIRE_CUDA=1 (benchmarks/gpu_check.py sets it): a test marked `cuda` fails instead of
# skipping when no CUDA device is usable, so a broken driver cannot pass as "skipped".
REQUIRE_CUDA = os.environ.get("FACEATTR_REQUIRE_CUDA") == "1"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cuda: needs a CUDA device; skipped without one, a failure under "
                                       "FACEATTR_REQUIRE_CUDA=1")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("cuda") is None:
        return
    import torch

    if not torch.cuda.is_available():
        message = "needs a CUDA device (torch.cuda.is_available() is False)"
        if REQUIRE_CUDA:
            pytest.fail(message + "; FACEATTR_REQUIRE_CUDA=1 requires one", pytrace=False)
        pytest.skip(message)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unmarked = [f"{item.nodeid} (uses {fixture}, needs @pytest.mark.{marker})"
                for item in items for fixture, marker in FIXTURE_MARKERS.items()
                if fixture in getattr(item, "fixturenames", ()) and not item.get_closest_marker(marker)]
    if unmarked:
        raise pytest.UsageError("unmarked tests: " + "; ".join(unmarked))


@pytest.fixture(scope="session", autouse=True)
def _torch_threads() -> None:
    import torch

    torch.set_num_threads(TORCH_THREADS)


# -- the real CelebA files ----------------------------------------------------------------------
@pytest.fixture(scope="session")
def celeba_sample() -> Path:
    """4,560 real CelebA images in the official distribution format."""
    return require_shared("celeba-sample")


@pytest.fixture(scope="session")
def celeba_annotations() -> Path:
    """The full official annotation files (202,599 rows)."""
    return require_shared("celeba-annotations")


# -- synthetic datasets -------------------------------------------------------------------------
@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int, int], Path]:
    """synthetic_root(n, seed): a downloaded dataset ROOT (ROOT/celeba/...) of n synthetic images,
    made once per (n, seed) in the session and shared: tests must not change it."""
    from faceattr.data.download import acquire
    from faceattr.synth.files import generate

    made: dict[tuple[int, int], Path] = {}

    def make(n: int, seed: int) -> Path:
        if (n, seed) not in made:
            base = tmp_path_factory.mktemp(f"synth-{n}-{seed}")
            generate(base / "source", n=n, seed=seed)
            acquire(str(base / "source"), base / "root")
            made[n, seed] = base / "root"
        return made[n, seed]

    return make


@pytest.fixture(scope="session")
def synth_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder laid out like the official CelebA distribution (zip + label files), 120 images."""
    from faceattr.synth.files import generate

    out = tmp_path_factory.mktemp("synth-source") / "source"
    generate(out, n=120, seed=7)
    return out


@pytest.fixture(scope="session")
def synth_root(synthetic_root: Callable[[int, int], Path]) -> Path:
    """A downloaded dataset ROOT (ROOT/celeba/...) of 300 synthetic images."""
    return synthetic_root(300, 1)


# -- the machine's PostgreSQL -------------------------------------------------------------------
@pytest.fixture
def postgres_url() -> Iterator[str]:
    """URL of an empty PostgreSQL database made for this test; the test must be marked services."""
    with postgres_database() as url:
        yield url
