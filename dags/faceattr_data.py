"""
### faceattr_data

Checks the data source for new data and, when there is some, acquires it as a new **data version**
and emits the `faceattr/data` asset event (version, counts, what changed): faceattr_train, with
`FACEATTR_TRAIN_ON_DATA=1`, retrains on it without anyone triggering it.

check_source → announce_data

* `check_source` is `faceattr download` on the source (param `source`, default `FACEATTR_SOURCE`)
  into the root: unchanged data is the cheap "up to date" check (sizes and times, nothing re-hashed);
  new data is fetched, verified and kept beside the older versions (hard links), which the runs
  split from them keep reading.
* `announce_data` emits the event only for a new version; skipped when the data was up to date.
* Scheduled by `FACEATTR_DATA_SCHEDULE` (e.g. `@daily`; unset: triggered by hand).
* Paths must lie under `FACEATTR_DATA_ROOTS`.

All logic is in `faceattr.orchestration.tasks` (check_data, data_event); this file is the table of contents.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow.sdk import DAG, Asset, Param, task

from faceattr import settings
from faceattr.orchestration import params as forms, tasks as orchestrate

DATA_ASSET = Asset(orchestrate.DATA_ASSET_NAME)


@task(retries=3, retry_delay=timedelta(seconds=30), retry_exponential_backoff=2.0,
      max_retry_delay=timedelta(minutes=10),
      doc_md="Fetches and verifies the source into the root when it changed (a new data version); up to date "
             "data is left alone. Retries with exponential backoff.")
def check_source(params=None):
    return orchestrate.check_data(params)


@task(outlets=[DATA_ASSET], doc_md="Emits the `faceattr/data` asset event (version, previous version, counts, "
                                   "what changed) when check_source acquired a new data version; skipped otherwise.")
def announce_data(downloaded: dict, outlet_events=None):
    outlet_events[DATA_ASSET].extra.update(orchestrate.data_event(downloaded))


with DAG(
    dag_id="faceattr_data",
    description="Check the CelebA source for new data; a new data version starts a retrain",
    schedule=settings.data_schedule(),
    start_date=datetime(2024, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    params={name: Param(**spec) for name, spec in forms.data_params().items()},
    doc_md=__doc__,
    tags=["faceattr"],
):
    announce_data(check_source())
