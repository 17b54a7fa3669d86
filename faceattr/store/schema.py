"""The run store's tables. The Alembic migrations in faceattr/store/migrations create them; these
classes describe them (a schema change is a new file in migrations/versions plus an edit here).

Only SQLAlchemy is imported: DAG files may import the store at parse time.
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON, Boolean, DateTime, Float, ForeignKey, ForeignKeyConstraint, Index, Integer, String, Text, false, text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Not Alembic's default name: the store may share a database with Airflow's own metadata.
VERSION_TABLE = "faceattr_alembic_version"


class UTCDateTime(TypeDecorator):
    """Timestamps stored as naive UTC and read back as aware UTC, alike on SQLite and PostgreSQL."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=timezone.utc)


class Base(DeclarativeBase):
    pass


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String, primary_key=True)
    dag_run_id: Mapped[str | None] = mapped_column(String)
    config: Mapped[dict] = mapped_column(JSON, default=lambda: {})
    status: Mapped[str] = mapped_column(String, default="running", server_default="running")
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    run_dir: Mapped[str] = mapped_column(Text)
    # The data version the run was split from (RUN/data_version.json; faceattr.data.versions).
    data_version: Mapped[str | None] = mapped_column(String)


class Epoch(Base):
    __tablename__ = "epochs"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    train_loss: Mapped[float | None] = mapped_column(Float)
    train_accuracy: Mapped[float | None] = mapped_column(Float)
    train_images: Mapped[int | None] = mapped_column(Integer)
    seconds: Mapped[float | None] = mapped_column(Float)
    images_per_second: Mapped[float | None] = mapped_column(Float)
    val_mean_accuracy: Mapped[float | None] = mapped_column(Float)
    val_majority_baseline: Mapped[float | None] = mapped_column(Float)
    test_mean_accuracy: Mapped[float | None] = mapped_column(Float)


class AttributeMetric(Base):
    __tablename__ = "attribute_metrics"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    split: Mapped[str] = mapped_column(String, primary_key=True)
    attribute: Mapped[str] = mapped_column(String, primary_key=True)
    accuracy: Mapped[float | None] = mapped_column(Float)
    balanced_accuracy: Mapped[float | None] = mapped_column(Float)
    f1: Mapped[float | None] = mapped_column(Float)
    majority_baseline: Mapped[float | None] = mapped_column(Float)


class Model(Base):
    __tablename__ = "models"
    # At most one current model, enforced by the database, not only by upsert_model.
    __table_args__ = (
        Index(
            "models_one_current", "is_current", unique=True,
            sqlite_where=text("is_current"), postgresql_where=text("is_current"),
        ),
    )

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(Text)
    val_mean_accuracy: Mapped[float] = mapped_column(Float)
    test_mean_accuracy: Mapped[float | None] = mapped_column(Float)
    # The champion: the model that scoring with `champion` uses. Kept with `state` by the registry.
    is_current: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # The registry (faceattr.store.registry): None until published, then MODEL_STATES; why, when, by whom.
    state: Mapped[str | None] = mapped_column(String)
    reason: Mapped[str | None] = mapped_column(Text)
    state_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    actor: Mapped[str | None] = mapped_column(String)
    # What the test accuracy was measured on: {"split", "seed", "data_sha256", "test_ids_sha256"}.
    eval_set: Mapped[dict | None] = mapped_column(JSON)
    # The model file's sha256 when it was published: resolve refuses a RUN/model.pt changed since.
    sha256: Mapped[str | None] = mapped_column(String)
    # What the gate compared for its last decision: rule, images, both figures (registry.publish).
    comparison: Mapped[dict | None] = mapped_column(JSON)


class ModelEvent(Base):
    """Every change of a model's registry state, oldest first: the registry's history."""

    __tablename__ = "model_events"
    __table_args__ = (
        ForeignKeyConstraint(["run_id", "epoch"], ["models.run_id", "models.epoch"], ondelete="CASCADE"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String)
    epoch: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String)
    reason: Mapped[str] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    # The champion just before this event (for a promotion: the one it replaced).
    previous_run_id: Mapped[str | None] = mapped_column(String)
    previous_epoch: Mapped[int | None] = mapped_column(Integer)
    # What was compared to decide (rule, images, both figures); hand changes say no comparison was made.
    comparison: Mapped[dict | None] = mapped_column(JSON)


class ScoringJob(Base):
    __tablename__ = "scoring_jobs"
    __table_args__ = (
        ForeignKeyConstraint(
            ["model_run_id", "model_epoch"], ["models.run_id", "models.epoch"], ondelete="SET NULL",
        ),
    )

    id: Mapped[str] = mapped_column(String, primary_key=True)
    model_path: Mapped[str | None] = mapped_column(Text)
    model_run_id: Mapped[str | None] = mapped_column(String)
    model_epoch: Mapped[int | None] = mapped_column(Integer)
    # The sha256 of the model file the job loaded (checked against the one its request resolved).
    model_sha256: Mapped[str | None] = mapped_column(String)
    input_path: Mapped[str | None] = mapped_column(Text)
    output_csv: Mapped[str | None] = mapped_column(Text)
    errors_csv: Mapped[str | None] = mapped_column(Text)
    images: Mapped[int | None] = mapped_column(Integer)
    rows: Mapped[int | None] = mapped_column(Integer)
    errors: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String, default="running", server_default="running")
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    message: Mapped[str | None] = mapped_column(Text)


MODEL_STATES = ("champion", "challenger", "retired")
TABLES = {table.__tablename__: table for table in (Run, Epoch, AttributeMetric, Model, ScoringJob, ModelEvent)}
