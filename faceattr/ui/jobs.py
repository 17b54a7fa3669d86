"""What the Scoring jobs pages show: every job, its two CSVs for download, and the prediction
summary (each attribute's positive rate in the scored set beside the rate in the model's training
split, the most moved flagged: a first sign that what is scored no longer looks like what the
model learned from); no HTML here.

A job's CSVs are served under fixed names only (predictions.csv, errors.csv), from the paths the
job recorded, and only when they resolve inside FACEATTR_DATA_ROOTS (faceattr.data.access).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd

from faceattr.attributes import ATTRIBUTES
from faceattr.data.access import AccessError, check_path
from faceattr.data.labels import read_attributes
from faceattr.data.split import read_split
from faceattr.data.versions import run_labels_file
from faceattr.run.layout import RunLayout
from faceattr.store import queries
from faceattr.store.store import RunNotFoundError
from faceattr.ui.data import NotFound, run_folder

JOB_FILES = {"predictions.csv": "output_csv", "errors.csv": "errors_csv"}  # link name -> the job's column
JOB_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,299}")
FLAG_TOP, FLAG_POINTS = 5, 0.05  # flagged: among the 5 largest moves, and at least 5 points
_rates: dict[tuple, pd.Series] = {}  # (path, mtime, size) -> positive rates: a CSV or a split is read once


def check_job_id(job_id: str) -> str:
    if not JOB_ID.fullmatch(job_id or ""):
        raise ValueError(f"job id {job_id!r}: expected letters, digits, '.', '_' or '-'")
    return job_id


def jobs_table(store, model_run_id: str | None = None) -> list[dict[str, Any]]:
    """Every scoring job (or one run's model's), newest first, with its duration and model digest."""
    rows = []
    for job in queries.scoring_jobs(store, model_run_id):
        start, end = job.get("started_at"), job.get("finished_at")
        rows.append({**job, "seconds": (end - start).total_seconds() if start and end else None,
                     # The digest the job pinned when it records one; else the one its model was published with.
                     "model_sha256": job.get("model_sha256") or job.get("model_published_sha256"),
                     "files": {name: _file_or_none(job, name) is not None for name in JOB_FILES}})
    return rows


def job(store, job_id: str) -> dict[str, Any]:
    found = next((row for row in jobs_table(store) if row["id"] == check_job_id(job_id)), None)
    if found is None:
        raise NotFound(f"no scoring job {job_id!r}")
    return found


def job_file(job_row: dict[str, Any], name: str) -> Path:
    """The job's CSV behind link `name`, resolved, inside the data roots; NotFound says why not."""
    field = JOB_FILES.get(name)
    if field is None:
        raise NotFound(f"{name!r} is not a file scoring jobs offer ({', '.join(JOB_FILES)})")
    recorded = job_row.get(field)
    if not recorded:
        raise NotFound(f"scoring job {job_row['id']}: no {name} recorded")
    try:
        path = check_path(recorded, name)
    except AccessError:
        raise NotFound(f"scoring job {job_row['id']}: its {name} is not readable on this server") from None
    if path.suffix.lower() != ".csv" or not path.is_file():
        raise NotFound(f"scoring job {job_row['id']}: no {name} (yet)")
    return path


def _file_or_none(job_row: dict[str, Any], name: str) -> Path | None:
    try:
        return job_file(job_row, name)
    except NotFound:
        return None


def _cached(path: Path, read) -> pd.Series:
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    if key not in _rates:
        _rates[key] = read()
    return _rates[key]


def scored_rates(csv: Path) -> pd.Series:
    """attribute -> share of the scored images predicted present (1), from a predictions CSV."""
    def read() -> pd.Series:
        table = pd.read_csv(csv, index_col=0, usecols=lambda column: column == "image_id" or column in ATTRIBUTES)
        missing = [name for name in ATTRIBUTES if name not in table.columns]
        if missing:
            raise ValueError(f"{csv}: not a predictions CSV (no column {missing[0]})")
        return (table[list(ATTRIBUTES)] == 1).mean()
    return _cached(csv, read)


def training_rates(run: dict[str, Any]) -> pd.Series | None:
    """attribute -> share of the run's training images labelled present; None when its folder or
    labels are not readable here."""
    folder = run_folder(run)
    root = (run.get("config") or {}).get("root")
    if folder is None or not root:
        return None
    try:
        labels_path = run_labels_file(folder, root)  # the run's own data version: what it trained on
        check_path(labels_path, "labels")
        split_path = RunLayout(folder).split

        def read() -> pd.Series:
            split = read_split(folder)
            labels = read_attributes(labels_path)
            return (labels.loc[labels.index.intersection(split.index[split == "train"])] == 1).mean()
        return _cached(split_path, read)
    except (AccessError, OSError, ValueError):
        return None


def drift(store, job_row: dict[str, Any]) -> dict[str, Any]:
    """The prediction summary of a job: {"rows": [{attribute, scored, training, moved, flagged}],
    "problem": why there is none, or None}. Rows come most moved first."""
    csv = _file_or_none(job_row, "predictions.csv")
    if csv is None:
        return {"rows": [], "problem": "the predictions CSV is not readable on this server"}
    try:
        scored = scored_rates(csv)
    except (OSError, ValueError) as exc:
        return {"rows": [], "problem": str(exc)}
    training = None
    if job_row.get("model_run_id"):
        try:
            training = training_rates(store.run(job_row["model_run_id"]))
        except RunNotFoundError:
            training = None
    rows = [{"attribute": name, "scored": float(scored[name]),
             "training": None if training is None else float(training[name])} for name in ATTRIBUTES]
    for row in rows:
        row["moved"] = None if row["training"] is None else row["scored"] - row["training"]
    rows.sort(key=lambda row: -abs(row["moved"] or 0.0))
    for rank, row in enumerate(rows):
        row["flagged"] = row["moved"] is not None and rank < FLAG_TOP and abs(row["moved"]) >= FLAG_POINTS
    problem = None if training is not None else "the model's training split is not readable on this server"
    return {"rows": rows, "problem": problem}
