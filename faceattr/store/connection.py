"""Where the run store is and how it is opened: the URL, the engine, and whether opening may create it.

The URL comes from FACEATTR_DB_URL; the default is a SQLite file, $FACEATTR_HOME/faceattr.db
(FACEATTR_HOME defaults to ./data). `postgresql://` takes the installed psycopg2 driver.

Only the commands that write to the store create it (the Airflow tasks, `faceattr models publish`,
`make run`); a command that only reads (`faceattr runs`, `faceattr models`, `predict --model
champion`, the UI) opens it with create=False and is told, in one line, that it does not exist.
Every error here is one line: a driver's message keeps only its first line.
"""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError

from faceattr import settings

DB_URL_ENV = settings.DB_URL
DB_FILE = "faceattr.db"
# What a reader is told to run when the store does not exist yet.
HOW_TO_CREATE = ("it is created by the commands that write to it: the faceattr_train DAG (`make run`) or "
                 "`faceattr models publish RUN`")


class StoreError(RuntimeError):
    """The store cannot be reached or its schema does not match this faceattr."""


class StoreMissingError(StoreError):
    """A command that only reads found no store at the URL (it never creates one)."""


def default_url() -> str:
    """FACEATTR_DB_URL, else a SQLite file $FACEATTR_HOME/faceattr.db (FACEATTR_HOME: ./data)."""
    return settings.db_url() or f"sqlite:///{settings.home().resolve() / DB_FILE}"


def make_engine(url: str, *, create: bool = True) -> Engine:
    """The engine for `url`; with create=False a SQLite file that does not exist is a StoreMissingError,
    and nothing (file or folder) is created."""
    parsed = _parse(url)
    backend = parsed.get_backend_name()
    shown = parsed.render_as_string(hide_password=True)
    if backend == "sqlite":
        database = parsed.database
        on_disk = bool(database) and database != ":memory:" and not database.startswith("file:")
        if on_disk and not create and not Path(database).is_file():
            raise missing(shown)
        if on_disk:
            try:
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"run store {shown}: cannot create its folder ({exc.strerror})") from None
        engine = create_engine(parsed)
        _sqlite_transactions(engine)
        return engine
    try:
        return create_engine(parsed, pool_pre_ping=True)
    except ModuleNotFoundError as exc:
        raise StoreError(f"run store {shown}: {exc}; PostgreSQL needs a driver such as psycopg2-binary") from None


def missing(shown_url: str) -> StoreMissingError:
    return StoreMissingError(f"run store {shown_url}: does not exist (check {DB_URL_ENV}); {HOW_TO_CREATE}")


def one_line(exc: BaseException) -> str:
    """A driver error in one line: its class and the first line of its message (SQLAlchemy adds the
    statement and a link; psycopg2 adds hints on further lines)."""
    original = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(original).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else 'no message'}"


def _parse(url: str) -> URL:
    try:
        parsed = make_url(url)
        backend = parsed.get_backend_name()
    except ArgumentError:
        raise StoreError(f"{DB_URL_ENV}: {url!r} is not a database URL (sqlite:///PATH or postgresql://...)") from None
    if backend not in ("sqlite", "postgresql"):
        raise StoreError(f"{DB_URL_ENV}: {backend} is not supported; use SQLite or PostgreSQL")
    if parsed.drivername == "postgresql" and importlib.util.find_spec("psycopg2") is not None:
        # SQLAlchemy's default PostgreSQL driver may be psycopg 3; the one faceattr installs is psycopg2.
        parsed = parsed.set(drivername="postgresql+psycopg2")
    return parsed


def quiet_alembic() -> None:
    """Alembic logs a dozen INFO lines per use, noise in every task log; keep its warnings. Called
    before alembic is imported (it logs on import), and only if nobody configured its logger."""
    alembic_log = logging.getLogger("alembic")
    if alembic_log.level == logging.NOTSET:
        alembic_log.setLevel(logging.WARNING)


def _sqlite_transactions(engine: Engine) -> None:
    """SQLAlchemy's recipe for real SQLite transactions (pysqlite would defer BEGIN and commit
    around DDL), with BEGIN IMMEDIATE for writes so concurrent writers queue on busy_timeout
    instead of failing with 'database is locked'."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None
        dbapi_connection.execute("PRAGMA foreign_keys = ON")
        dbapi_connection.execute("PRAGMA busy_timeout = 30000")

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("faceattr_write") else "BEGIN")
