"""Fixtures of the store tests: one store per test, on SQLite and on a throw-away PostgreSQL database."""
from __future__ import annotations

import pytest

from faceattr.store.store import Store


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.services)])
def store_url(request, tmp_path):
    """URL of an empty database: a SQLite file, or a PostgreSQL database created for this test."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return request.getfixturevalue("postgres_url")  # tests/conftest.py


@pytest.fixture
def store(store_url):
    with Store(store_url) as opened:
        yield opened
