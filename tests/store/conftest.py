"""Fixtures of the store tests: one store per test, on SQLite and on a throw-away PostgreSQL database."""
from __future__ import annotations

import os
import uuid
from typing import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from faceattr.store.store import Store

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes") or os.environ.get("FACEATTR_STRICT") == "1"
PG_SERVER = os.environ.get("FACEATTR_TEST_PG", "127.0.0.1:5432")


def _postgres_admin():
    """An AUTOCOMMIT engine on the server's `postgres` database, as user postgres or root."""
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return None, "psycopg2 is not installed"
    reason = ""
    for user in ("postgres", "root"):
        engine = create_engine(
            f"postgresql+psycopg2://{user}@{PG_SERVER}/postgres",
            isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5},
        )
        try:
            with engine.connect():
                return engine, ""
        except OperationalError as exc:
            reason = str(exc).strip().splitlines()[0]
            engine.dispose()
    return None, reason


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.services)])
def store_url(request, tmp_path):
    """URL of an empty database: a SQLite file, or a PostgreSQL database created for this test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    yield from _postgres_database()


@pytest.fixture
def postgres_url():
    """URL of an empty PostgreSQL database created for this test (for what only PostgreSQL shows)."""
    yield from _postgres_database()


def _postgres_database() -> Iterator[str]:
    admin, reason = _postgres_admin()
    if admin is None:
        message = f"PostgreSQL at {PG_SERVER} unreachable: {reason}"
        if CI:
            pytest.fail(message + " (CI must run the PostgreSQL tests)")
        pytest.skip(message)
    name = f"faceattr_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield admin.url.set(database=name, drivername="postgresql+psycopg2").render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE datname = :name AND pid <> pg_backend_pid()"),
                {"name": name},
            )
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
        admin.dispose()


@pytest.fixture
def store(store_url):
    with Store(store_url) as opened:
        yield opened
