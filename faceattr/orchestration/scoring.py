"""Scoring jobs: faceattr_score's tasks and faceattr_train's score_private.

A scoring job resolves a published model, checks both paths against FACEATTR_DATA_ROOTS before
anything is read or written, predicts into a CSV and its errors file (faceattr.engine.predict),
and is recorded in the run store as running, then success or failed.

The model is pinned: the request records the resolved run, epoch and sha256; the scoring task reads
that file once, refuses it unless its bytes have that sha256, and predicts from those very bytes
(a private copy), so a file swapped after the request is never scored under the champion's name.
The job records the sha256.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

from faceattr import settings
from faceattr.data.access import check_path, data_roots
from faceattr.fsutil import ChecksumError, sha256_of, write_digest
from faceattr.orchestration.tasks import run_folder, skip, store, summary
from faceattr.run import metrics
from faceattr.run.layout import sanitize_run_id
from faceattr.run.timing import now
from faceattr.store import registry

log = logging.getLogger(__name__)


def default_score_csv(dag_run_id: str) -> str:
    return str(settings.home() / "scores" / f"{sanitize_run_id(dag_run_id)}.csv")


def resolve_model(model: str) -> dict:
    """`champion` (or `latest`) -> the registry's champion; a run id -> that run's published model.

    Returns {"path", "run_id", "epoch", "sha256"}.
    """
    with store() as opened:
        try:
            return registry.resolve(opened, model)
        except registry.RegistryError as exc:
            raise FileNotFoundError(str(exc)) from None


def check_score_request(images: str, output: str | None, model: str, dag_run_id: str) -> dict:
    """Resolve and check a scoring request before anything is read or written.

    Returns {"images", "output", "model": {"path", "run_id", "epoch", "sha256"}} for the scoring task.
    """
    images_path = check_path(images, "images")
    output_path = check_path(output or default_score_csv(dag_run_id), "output")
    if output_path.suffix.lower() != ".csv":
        raise ValueError(f"output: {output_path} must end in .csv")
    if not images_path.exists():
        raise FileNotFoundError(f"images: {images_path} does not exist")
    if not (images_path.is_dir() or images_path.suffix.lower() == ".zip"):
        raise ValueError(f"images: {images_path} is neither a folder nor a .zip")
    return {"images": str(images_path), "output": str(output_path), "model": resolve_model(model)}


def score(images: str, output: str, model: Mapping[str, Any], *, job_id: str, batch_size: int = 128,
          device: str | None = None, scores: bool = False) -> dict:
    """Predict every image under `images` into `output` (and its .errors.csv), recorded as a scoring job.

    `model` is resolve_model's {"path", "run_id", "epoch", "sha256"}: the file scored must have that
    sha256. Rows + errors = files seen (faceattr.engine.predict).
    """
    from faceattr.engine.predict import predict  # torch, pandas: not at DAG parse time
    images_path = check_path(images, "images")
    output_path = check_path(output, "output")
    job = {"model_path": str(model["path"]), "model_run_id": model["run_id"], "model_epoch": int(model["epoch"]),
           "model_sha256": model["sha256"], "input_path": str(images_path), "output_csv": str(output_path)}
    with store() as opened:
        opened.upsert_scoring_job(job_id, status="running", started_at=now(), **job)
    try:
        with pinned_model(Path(model["path"]), model["sha256"]) as path:
            result = predict(path, images_path, output_path, scores=scores, batch_size=batch_size,
                             device=None if device in (None, "auto") else device, roots=data_roots())
    except Exception as exc:
        with store() as opened:
            opened.upsert_scoring_job(job_id, status="failed", finished_at=now(),
                                      message=f"{type(exc).__name__}: {exc}", **job)
        raise
    with store() as opened:
        opened.upsert_scoring_job(
            job_id, status="success", finished_at=now(), images=int(result["images"]), rows=int(result["rows"]),
            errors=int(result["errors"]), errors_csv=str(result["errors_csv"]), **job,
        )
    log.info("scored %d image(s): %d row(s) -> %s, %d error(s) -> %s", result["images"], result["rows"],
             result["csv"], result["errors"], result["errors_csv"])
    return {"job_id": job_id, **summary(result, "images", "rows", "errors", "csv", "errors_csv"),
            "model": str(model["path"])}


@contextlib.contextmanager
def pinned_model(path: Path, sha256: str) -> Iterator[Path]:
    """A private copy of the model file whose bytes have `sha256` (read once, then checked); the
    file at `path` may change afterwards without changing what is scored."""
    data = path.read_bytes()
    found = hashlib.sha256(data).hexdigest()
    if found != sha256:
        raise ChecksumError(f"{path}: sha256 {found} is not {sha256}, the model the request resolved; it changed "
                            "since (selected again?); nothing was scored")
    with tempfile.TemporaryDirectory(prefix="faceattr-model-") as folder:
        copy = Path(folder) / path.name
        copy.write_bytes(data)
        write_digest(copy, sha256)
        yield copy


def score_private(params: Mapping[str, Any], dag_run_id: str) -> dict:
    """Predict the private images with this run's model into RUN/private_predictions.csv (skipped without them)."""
    images = params.get("private_images")
    if not images:
        raise skip("no private images given (param private_images)")
    with run_folder(params, dag_run_id) as run:
        best = metrics.read_best(run.dir, missing_ok=False)
        model = {"path": str(run.layout.model), "run_id": run.id, "epoch": int(best["epoch"]),
                 "sha256": sha256_of(run.layout.model)}
        return score(images, str(run.layout.private_predictions), model, job_id=f"{run.id}-private",
                     device=run.config.device)
