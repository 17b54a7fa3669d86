"""Model registry: each published model's state (champion, challenger, retired) with its reason,
time, actor and evaluation set; model_events keeps every change of state.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 09:30:00
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: Union[str, Sequence[str], None] = "0001"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

NEW_COLUMNS = ("state", "reason", "state_at", "actor", "eval_set")


def upgrade() -> None:
    op.add_column("models", sa.Column("state", sa.String(), nullable=True))
    op.add_column("models", sa.Column("reason", sa.Text(), nullable=True))
    op.add_column("models", sa.Column("state_at", sa.DateTime(), nullable=True))
    op.add_column("models", sa.Column("actor", sa.String(), nullable=True))
    op.add_column("models", sa.Column("eval_set", sa.JSON(), nullable=True))
    # Models published before the registry: the current one is the champion, the others challengers.
    op.execute(sa.text("UPDATE models SET state = 'champion', reason = 'current model before the registry' "
                       "WHERE is_current"))
    op.execute(sa.text("UPDATE models SET state = 'challenger', reason = 'published before the registry' "
                       "WHERE published AND NOT is_current"))
    op.create_table(
        "model_events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("previous_run_id", sa.String(), nullable=True),
        sa.Column("previous_epoch", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["run_id", "epoch"], ["models.run_id", "models.epoch"], ondelete="CASCADE"),
    )


def downgrade() -> None:
    op.drop_table("model_events")
    # Plain ALTER TABLE DROP COLUMN (SQLite >= 3.35), not batch_alter_table: batch recreates the
    # table, and dropping the old models with foreign keys on sets every scoring job's model to NULL.
    for name in NEW_COLUMNS:
        op.drop_column("models", name)
