"""Alembic migrations of the run store (faceattr.store); Store.upgrade() runs them."""
