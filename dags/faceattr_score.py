"""
### faceattr_score

Scores a folder or .zip of face images with a published model into a CSV (`image_id` + the 40
attributes, values -1/1) and an errors file beside it (`<name>.errors.csv`: image_id, reason),
exactly as `faceattr predict` does, and records the scoring job in the store.

* Params: `images`, `output` (empty: `$FACEATTR_HOME/scores/<run id>.csv`), `model` (`champion`,
  the default, or the run id of a published model; the form lists them, read from the run store
  each time the DAG file is parsed: a model published since shows after the next parse).
* Both paths must lie under `FACEATTR_DATA_ROOTS` (symlinks and `..` resolved); anything else is
  refused by `check_request` before any file is read or written.
* With `FACEATTR_STANDING_SET` set, the DAG is also scheduled on the `faceattr/model` asset: each
  new champion re-scores that standing set. `faceattr models promote`/`rollback` emit no event:
  trigger this DAG after them to re-score it.

All logic is in `faceattr.orchestration.scoring`; this file is the table of contents.
"""
from __future__ import annotations

from datetime import datetime, timezone

from airflow.sdk import DAG, Asset, Param, task

from faceattr import settings
from faceattr.orchestration import params as forms, scoring
from faceattr.orchestration.tasks import MODEL_ASSET_NAME
from faceattr.run.layout import sanitize_run_id

MODEL_ASSET = Asset(MODEL_ASSET_NAME)


@task(doc_md="Checks the images and output paths against FACEATTR_DATA_ROOTS and finds the model file; "
             "nothing is read or written before this passes.")
def check_request(params=None, run_id=None):
    return scoring.check_score_request(params["images"], params["output"], params["model"], run_id)


@task(pool=settings.gpu_pool(), queue=settings.gpu_queue(),
      doc_md="Predicts every image into the CSV and errors file (written atomically) and records the scoring job.")
def score_images(request: dict, params=None, run_id=None):
    return scoring.score(
        request["images"], request["output"], request["model"],
        job_id=f"faceattr_score-{sanitize_run_id(run_id)}",
        batch_size=params["batch_size"], device=params["device"], scores=params["scores"],
    )


with DAG(
    dag_id="faceattr_score",
    description="Score a folder or zip of images with a published faceattr model",
    schedule=[MODEL_ASSET] if settings.standing_set() else None,
    start_date=datetime(2024, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    params={name: Param(**spec) for name, spec in forms.score_params().items()},
    doc_md=__doc__,
    tags=["faceattr"],
):
    score_images(check_request())
