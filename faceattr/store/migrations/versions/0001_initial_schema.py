"""Initial schema: runs, epochs, attribute_metrics, models, scoring_jobs.

Revision ID: 0001
Revises:
Create Date: 2025-01-01 00:00:00
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("dag_run_id", sa.String(), nullable=True),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(), nullable=False, server_default="running"),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("run_dir", sa.Text(), nullable=False),
    )
    op.create_table(
        "epochs",
        sa.Column("run_id", sa.String(), sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("epoch", sa.Integer(), primary_key=True),
        sa.Column("train_loss", sa.Float(), nullable=True),
        sa.Column("train_accuracy", sa.Float(), nullable=True),
        sa.Column("train_images", sa.Integer(), nullable=True),
        sa.Column("seconds", sa.Float(), nullable=True),
        sa.Column("images_per_second", sa.Float(), nullable=True),
        sa.Column("val_mean_accuracy", sa.Float(), nullable=True),
        sa.Column("val_majority_baseline", sa.Float(), nullable=True),
        sa.Column("test_mean_accuracy", sa.Float(), nullable=True),
    )
    op.create_table(
        "attribute_metrics",
        sa.Column("run_id", sa.String(), sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("epoch", sa.Integer(), primary_key=True),
        sa.Column("split", sa.String(), primary_key=True),
        sa.Column("attribute", sa.String(), primary_key=True),
        sa.Column("accuracy", sa.Float(), nullable=True),
        sa.Column("balanced_accuracy", sa.Float(), nullable=True),
        sa.Column("f1", sa.Float(), nullable=True),
        sa.Column("majority_baseline", sa.Float(), nullable=True),
    )
    op.create_table(
        "models",
        sa.Column("run_id", sa.String(), sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("epoch", sa.Integer(), primary_key=True),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("val_mean_accuracy", sa.Float(), nullable=False),
        sa.Column("test_mean_accuracy", sa.Float(), nullable=True),
        sa.Column("published", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("is_current", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    # At most one current model: a unique index over the rows where is_current holds.
    op.create_index(
        "models_one_current", "models", ["is_current"], unique=True,
        sqlite_where=sa.text("is_current"), postgresql_where=sa.text("is_current"),
    )
    op.create_table(
        "scoring_jobs",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("model_path", sa.Text(), nullable=True),
        sa.Column("model_run_id", sa.String(), nullable=True),
        sa.Column("model_epoch", sa.Integer(), nullable=True),
        sa.Column("input_path", sa.Text(), nullable=True),
        sa.Column("output_csv", sa.Text(), nullable=True),
        sa.Column("errors_csv", sa.Text(), nullable=True),
        sa.Column("images", sa.Integer(), nullable=True),
        sa.Column("rows", sa.Integer(), nullable=True),
        sa.Column("errors", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(), nullable=False, server_default="running"),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["model_run_id", "model_epoch"], ["models.run_id", "models.epoch"], ondelete="SET NULL",
        ),
    )


def downgrade() -> None:
    op.drop_table("scoring_jobs")
    op.drop_index("models_one_current", table_name="models")
    op.drop_table("models")
    op.drop_table("attribute_metrics")
    op.drop_table("epochs")
    op.drop_table("runs")
