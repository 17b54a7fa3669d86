"""Plain helpers the tests import by name (`from support import ...`); fixtures live in conftest.py.

(A conftest.py cannot be imported reliably: pytest gives every conftest.py outside a package the
module name "conftest", so the one loaded last wins.)
"""
from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, NoReturn

import pytest

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
STRICT = os.environ.get("CI", "").lower() in ("1", "true", "yes") or os.environ.get("FACEATTR_STRICT") == "1"


def missing(message: str) -> NoReturn:
    """Skip for a missing resource; under CI, where every resource must be present, fail."""
    if STRICT:
        pytest.fail(message + " (CI must run these tests)")
    pytest.skip(message)


def require_shared(relative: str) -> Path:
    """Path of `../shared/<relative>`; skip when absent, but fail under CI where it must exist."""
    path = SHARED / relative
    if not path.exists():
        missing(f"{path} is absent: real CelebA files live beside the checkout, not in it")
    return path


# -- the machine's PostgreSQL -------------------------------------------------------------------
# FACEATTR_TEST_PG: host:port; FACEATTR_TEST_PG_USER: the user (default: postgres, then root).
PG_SERVER = os.environ.get("FACEATTR_TEST_PG", "127.0.0.1:5432")
PG_USERS = (os.environ["FACEATTR_TEST_PG_USER"],) if os.environ.get("FACEATTR_TEST_PG_USER") else ("postgres", "root")


def postgres_admin() -> "Engine":
    """An AUTOCOMMIT engine on the server's maintenance database (CREATE/DROP DATABASE need it);
    skips when PostgreSQL is unreachable (fails under CI)."""
    from sqlalchemy import create_engine
    from sqlalchemy.exc import OperationalError

    reason = ""
    for user in PG_USERS:
        engine = create_engine(f"postgresql+psycopg2://{user}@{PG_SERVER}/postgres",
                               isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
        try:
            with engine.connect():
                return engine
        except OperationalError as exc:
            reason = str(exc).strip().splitlines()[0]
            engine.dispose()
    missing(f"PostgreSQL at {PG_SERVER} unreachable: {reason}")


def drop_database(admin: "Engine", name: str) -> None:
    """Drop a test database, ending whatever connections to it are left."""
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def postgres_database(prefix: str = "faceattr_test", driver: str = "postgresql+psycopg2") -> Iterator[str]:
    """A fresh database on the machine's PostgreSQL for the `with` block; yields its URL."""
    admin = postgres_admin()
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield admin.url.set(database=name, drivername=driver).render_as_string(hide_password=False)
    finally:
        drop_database(admin, name)
        admin.dispose()


def published_model_file(run_dir: Path) -> None:
    """A model.pt as far as publish reads it (run, arch, epoch, digest), and the test metrics measured on it."""
    import torch  # support is imported by every test module: torch only for the tests that publish

    from faceattr.checkpoint import save_checkpoint
    from faceattr.run import metrics
    from faceattr.run.layout import RunLayout

    save_checkpoint({"state_dict": {"w": torch.zeros(1)}, "arch": "resnet18", "epoch": 2, "run": run_dir.name},
                    RunLayout(run_dir).model)
    if RunLayout(run_dir).metrics("test", 2).is_file():
        tested = metrics.read_epoch_metrics(run_dir, "test", 2)
        tested.pop("model_sha256", None)
        metrics.write_epoch_metrics(run_dir, "test", 2, tested)
