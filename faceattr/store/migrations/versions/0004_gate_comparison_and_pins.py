"""What the publish gate compared (models, model_events), the model file a scoring job used
(scoring_jobs.model_sha256) and the data version a run was split from (runs.data_version).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07 06:00:00
"""
import sqlalchemy as sa
from alembic import op

revision, down_revision = "0004", "0003"
branch_labels = depends_on = None


def upgrade() -> None:
    # Plain ADD/DROP COLUMN, never batch_alter_table (see 0003).
    op.add_column("models", sa.Column("comparison", sa.JSON(), nullable=True))
    op.add_column("model_events", sa.Column("comparison", sa.JSON(), nullable=True))
    op.add_column("scoring_jobs", sa.Column("model_sha256", sa.String(), nullable=True))
    op.add_column("runs", sa.Column("data_version", sa.String(), nullable=True))


def downgrade() -> None:
    op.drop_column("runs", "data_version")
    op.drop_column("scoring_jobs", "model_sha256")
    op.drop_column("model_events", "comparison")
    op.drop_column("models", "comparison")
