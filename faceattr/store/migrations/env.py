"""Alembic environment of the run store.

Store.upgrade() passes its open connection in `config.attributes["connection"]`, so the
migration runs inside the store's transaction. Run by hand (alembic with script_location set to
this folder), it connects to FACEATTR_DB_URL, or the default SQLite file.
"""
from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from faceattr.store.schema import VERSION_TABLE, Base
from faceattr.store.store import default_url

config = context.config
target_metadata = Base.metadata


def configure(**kwargs) -> None:
    context.configure(
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        render_as_batch=True,  # SQLite cannot ALTER most things; batch mode copies the table
        **kwargs,
    )


def run_offline() -> None:
    configure(url=config.get_main_option("sqlalchemy.url") or default_url(), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url") or default_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
