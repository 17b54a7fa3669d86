"""Read-only questions the pages ask the run store, beside Store's own reads (store.py).

Each takes an open Store and returns plain dicts: the UI never builds SQL of its own.
Every column of a row is returned, so a column added by a later migration shows up too.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from faceattr.store.schema import Model, ModelEvent, Run, ScoringJob
from faceattr.store.store import Store

_NEVER = datetime.min.replace(tzinfo=timezone.utc)


def _row(row: Any) -> dict[str, Any]:
    return {column.key: getattr(row, column.key) for column in row.__table__.columns}


def scoring_jobs(store: Store, model_run_id: str | None = None) -> list[dict[str, Any]]:
    """Scoring jobs, newest first (all, or those of one run's model), each with the published
    digest of its model as "model_published_sha256" (None when the model was never published)."""
    query = select(ScoringJob, Model.sha256).outerjoin(
        Model, (Model.run_id == ScoringJob.model_run_id) & (Model.epoch == ScoringJob.model_epoch))
    if model_run_id is not None:
        query = query.where(ScoringJob.model_run_id == model_run_id)
    with Session(store.engine) as session:
        rows = [{**_row(job), "model_published_sha256": sha256} for job, sha256 in session.execute(query)]
    return sorted(rows, key=lambda job: (job.get("started_at") or _NEVER, job["id"]), reverse=True)


def model_events(store: Store, run_id: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
    """The registry's history (who, when, what, why), newest first: all of it or one run's."""
    query = select(ModelEvent).order_by(ModelEvent.id.desc()).limit(limit)
    if run_id is not None:
        query = query.where(ModelEvent.run_id == run_id)
    with store.engine.connect() as conn:
        return [dict(row) for row in conn.execute(query).mappings()]


def published_models(store: Store) -> list[dict[str, Any]]:
    """Every published model with its run's start, DAG run id and run folder: the champion first,
    then by the time of their last change, newest first."""
    query = (select(Model, Run.started_at, Run.dag_run_id, Run.run_dir, Run.config)
             .join(Run, Run.id == Model.run_id).where(Model.state.is_not(None)))
    with store.engine.connect() as conn:
        rows = [dict(row) for row in conn.execute(query).mappings()]
    return sorted(rows, key=lambda m: (m["state"] != "champion", -(m["state_at"] or _NEVER).timestamp()))
