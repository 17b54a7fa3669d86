"""Models: the sha256 of the model file when it was published (scoring refuses a file that has
changed since: several epochs' rows of a run point at one RUN/model.pt); drop `published`, which
the registry's `state` replaced and nothing read.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 10:50:00
"""
import sqlalchemy as sa
from alembic import op

revision, down_revision = "0003", "0002"
branch_labels = depends_on = None


def upgrade() -> None:
    # Plain ADD/DROP COLUMN, never batch_alter_table: recreating models on SQLite with foreign keys
    # on would set every scoring job's model to NULL (see 0002's downgrade).
    op.add_column("models", sa.Column("sha256", sa.String(), nullable=True))
    op.drop_column("models", "published")


def downgrade() -> None:
    op.add_column("models", sa.Column("published", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.execute(sa.text("UPDATE models SET published = (state IS NOT NULL)"))
    op.drop_column("models", "sha256")
