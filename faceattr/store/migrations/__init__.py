"""Alembic migrations of the run store (faceattr.store.store); Store.upgrade() runs them."""
