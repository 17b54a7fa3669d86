"""The plugin's FastAPI app, mounted by Airflow's API server at /faceattr (faceattr.ui.plugin).

Airflow does not protect a plugin's app: the app-wide dependency below asks Airflow's auth
manager, for every route, whether the caller (the UI's `_token` cookie or an `Authorization:
Bearer` token from POST /auth/token) may read faceattr_train's DAG runs: no credential 401, a bad
or unauthorised one 403. Imported only by the API server (it loads Airflow's API security code).
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from sqlalchemy import select

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.common.db.common import SessionDep
from airflow.api_fastapi.core_api.security import requires_access_dag
from airflow.models.taskinstance import TaskInstance

from faceattr import settings
from faceattr.store.store import RunNotFoundError
from faceattr.ui import data, pages

TRAIN_DAG_ID = "faceattr_train"
log = logging.getLogger(__name__)

app = FastAPI(
    title="faceattr", docs_url=None, redoc_url=None, openapi_url=None,
    dependencies=[Depends(requires_access_dag("GET", DagAccessEntity.RUN, param_dag_id=TRAIN_DAG_ID))],
)

FILE_HEADERS = {"Content-Security-Policy": "sandbox", "X-Content-Type-Options": "nosniff"}

_stores: dict[str | None, Any] = {}
_lock = threading.Lock()


def store():
    """One Store per database URL for this process (opening one checks the schema's migrations).

    Never creates a SQLite file: an API server without FACEATTR_DB_URL (or FACEATTR_HOME) would
    otherwise make an empty ./data/faceattr.db and show no runs, silently.
    """
    from sqlalchemy.engine import make_url

    from faceattr.store.store import Store, default_url

    url = default_url()
    with _lock:
        if url not in _stores:
            parsed = make_url(url)
            if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").is_file():
                raise HTTPException(503, f"run store {url}: no such database file; set {settings.DB_URL} (or "
                                         f"{settings.HOME}) for the API server to the store the DAG's tasks write")
            log.info("faceattr UI: run store %s", parsed.render_as_string(hide_password=True))
            _stores[url] = Store(url)
        return _stores[url]


def airflow_tasks(session, dag_run_id: str | None) -> list[dict[str, Any]]:
    """The DAG run's task instances: what runs now, and since when."""
    if not dag_run_id:
        return []
    rows = session.execute(select(TaskInstance.task_id, TaskInstance.state, TaskInstance.start_date,
                                  TaskInstance.end_date).where(TaskInstance.dag_id == TRAIN_DAG_ID,
                                                               TaskInstance.run_id == dag_run_id)).all()
    return [{"task_id": r.task_id, "state": str(getattr(r.state, "value", r.state)), "start_date": r.start_date,
             "end_date": r.end_date} for r in rows]


def view_of(run_id: str, session) -> dict[str, Any]:
    """data.run_view with the HTTP errors: a malformed run id 400, an unknown run 404."""
    try:
        data.check_run_id(run_id)
        opened = store()
        run = opened.run(run_id)
    except RunNotFoundError as exc:
        raise HTTPException(404, str(exc)) from None
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    return data.run_view(opened, run_id, airflow_tasks(session, run["dag_run_id"]))


def jsonable(value: Any) -> Any:
    from fastapi.encoders import jsonable_encoder

    return jsonable_encoder(value)


@app.get("/", response_class=HTMLResponse)
def runs_page() -> str:
    return pages.runs_page(data.runs_table(store()))


@app.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(run_id: str, session: SessionDep) -> str:
    return pages.run_page(view_of(run_id, session))


@app.get("/report/{dag_id}/{dag_run_id:path}", response_class=HTMLResponse)
def training_report(dag_id: str, dag_run_id: str, session: SessionDep) -> str:
    """The "Training report" tab of a DAG run (Airflow shows the tab on every DAG's runs)."""
    from faceattr.run.layout import sanitize_run_id

    if dag_id != TRAIN_DAG_ID:
        return pages.message_page("No training report", f"{dag_id} is not {TRAIN_DAG_ID}: its runs train no model.")
    try:
        run_id = sanitize_run_id(dag_run_id)
        run = store().run(run_id)
    except ValueError:  # RunNotFoundError included
        run = None
    # Two DAG run ids can sanitise to one folder name (a:b, a-b): show only this DAG run's own run.
    if run is None or run["dag_run_id"] != dag_run_id:
        return pages.message_page("Training report", f"DAG run {dag_run_id} has no run folder yet (it is queued or "
                                                     "still checking its settings); reload once split has run.")
    return pages.run_page(view_of(run_id, session))


@app.get("/compare", response_class=HTMLResponse)
def compare(session: SessionDep, run: list[str] = Query(default=[])) -> str:
    if not 2 <= len(run) <= 8:
        raise HTTPException(400, "compare: give 2 to 8 runs (?run=A&run=B)")
    chosen = []
    for run_id in run:
        view = view_of(run_id, session)
        chosen.append({**view["run"], "curves": view["curves"], "config": view["config"]})
    return pages.compare_page(chosen)


@app.get("/runs/{run_id}/files/{name:path}")
def download_file(run_id: str, name: str) -> FileResponse:
    """A file of the run, only from inside its folder: model.pt, config.json, the report, the private CSVs."""
    try:
        run = store().run(data.check_run_id(run_id))
        path = data.download_path(run, name)
    except (data.NotFound, RunNotFoundError) as exc:
        raise HTTPException(404, str(exc)) from None
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    inline = name.startswith("report/")
    # The report's html/svg open inline on Airflow's origin: sandbox them (no scripts, no same-origin
    # cookies or API calls) and forbid sniffing; the report needs only inline CSS and data: images.
    return FileResponse(path, filename=None if inline else path.name, headers=FILE_HEADERS)


@app.get("/api/runs")
def api_runs() -> JSONResponse:
    return JSONResponse(jsonable(data.runs_table(store())))


@app.get("/api/runs/{run_id}")
def api_run(run_id: str, session: SessionDep) -> JSONResponse:
    view = view_of(run_id, session)
    view["run"] = {k: v for k, v in view["run"].items() if k != "attribute_metrics"}  # in "attributes"
    return JSONResponse(jsonable(view))


@app.get("/api/runs/{run_id}/live")
def api_live(run_id: str, session: SessionDep) -> JSONResponse:
    """The refreshed figures of a running run: its status and the live part of the Run page."""
    view = view_of(run_id, session)
    return JSONResponse({"status": view["run"]["status"], "html": pages.live_part(view)})
