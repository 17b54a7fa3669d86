"""The plugin's FastAPI app, mounted by Airflow's API server at /faceattr (faceattr.ui.plugin).

Airflow does not protect a plugin's app: the app-wide dependency below asks Airflow's auth
manager, for every route, whether the caller (the UI's `_token` cookie or an `Authorization:
Bearer` token from POST /auth/token) may read faceattr_train's DAG runs: no credential 401, a bad
or unauthorised one 403. Imported only by the API server (it loads Airflow's API security code).
"""
from __future__ import annotations

import logging
import mimetypes
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import Body, Depends, FastAPI, HTTPException, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from sqlalchemy import select

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.common.db.common import SessionDep
from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_dag
from airflow.models.dagrun import DagRun, DagRunNote
from airflow.models.taskinstance import TaskInstance

from faceattr import settings
from faceattr.run.layout import sanitize_run_id
from faceattr.store import registry
from faceattr.store.connection import StoreMissingError
from faceattr.store.store import RunNotFoundError, Store, default_url
from faceattr.ui import compare as compare_html, data, jobs, model_pages, models, pages

TRAIN_DAG_ID = "faceattr_train"
log = logging.getLogger(__name__)

app = FastAPI(
    title="faceattr", docs_url=None, redoc_url=None, openapi_url=None,
    dependencies=[Depends(requires_access_dag("GET", DagAccessEntity.RUN, param_dag_id=TRAIN_DAG_ID))],
)

FILE_HEADERS = {"Content-Security-Policy": "sandbox", "X-Content-Type-Options": "nosniff"}
# A download that is not text goes out as it is on disk: Airflow's API server gzips every response
# on the fly, which costs more than it saves on model weights; its GZip middleware leaves alone a
# response that already says how it is encoded.
BINARY_HEADERS = {**FILE_HEADERS, "Content-Encoding": "identity"}
BINARY_CHUNK = 1024 * 1024  # read and sent 1 MiB at a time (Starlette's 64 KiB: a third slower on model.pt)
# Registry changes come from the pages' own script, which sends this header: a form or link on
# another site cannot (a cross-origin request with a custom header needs CORS, which is not granted).
ACTION_HEADER = "X-Faceattr-Action"

_stores: dict[str | None, Any] = {}
_lock = threading.Lock()


def store():
    """One Store per database URL for this process (opening one checks the schema's migrations).

    Never creates a SQLite file: an API server without FACEATTR_DB_URL (or FACEATTR_HOME) would
    otherwise make an empty ./data/faceattr.db and show no runs, silently.
    """
    url = default_url()
    with _lock:
        if url not in _stores:
            try:
                opened = Store(url, create=False)
            except StoreMissingError as exc:
                raise HTTPException(503, f"{exc}; set {settings.DB_URL} (or {settings.HOME}) for the API server "
                                         "to the store the DAG's tasks write") from None
            log.info("faceattr UI: run store %s", opened.url)
            _stores[url] = opened
        return _stores[url]


def airflow_tasks(session, dag_run_id: str | None) -> list[dict[str, Any]]:
    """The DAG run's task instances: what runs now, and since when."""
    if not dag_run_id or session is None:
        return []
    rows = session.execute(select(TaskInstance.task_id, TaskInstance.state, TaskInstance.start_date,
                                  TaskInstance.end_date).where(TaskInstance.dag_id == TRAIN_DAG_ID,
                                                               TaskInstance.run_id == dag_run_id)).all()
    return [{"task_id": r.task_id, "state": str(getattr(r.state, "value", r.state)), "start_date": r.start_date,
             "end_date": r.end_date} for r in rows]


def dag_run_notes(session) -> dict[str, str]:
    """faceattr_train's DAG run id -> the note a user wrote on it in Airflow."""
    if session is None:
        return {}
    rows = session.execute(select(DagRun.run_id, DagRunNote.content).join(DagRunNote, DagRunNote.dag_run_id == DagRun.id)
                           .where(DagRun.dag_id == TRAIN_DAG_ID, DagRunNote.content.is_not(None))).all()
    return {row.run_id: row.content for row in rows}


def view_of(run_id: str, session) -> dict[str, Any]:
    """data.run_view with the HTTP errors: a malformed run id 400, an unknown run 404 (naming only the id)."""
    try:
        view = data.run_view(store(), run_id, airflow_tasks(session, _dag_run_id(run_id)))
    except data.NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    view["run"]["note"] = dag_run_notes(session).get(view["run"]["dag_run_id"])
    view["run"]["name"] = data.run_name(view["run"])
    return view


def _dag_run_id(run_id: str) -> str | None:
    try:
        return store().run(data.check_run_id(run_id))["dag_run_id"]
    except ValueError:  # RunNotFoundError included: run_view says so
        return None


def file_response(path: Path, *, inline: bool) -> FileResponse:
    """A file as a download (or inline: the report's pages), never sniffed; binaries uncompressed."""
    kind = mimetypes.guess_type(path.name)[0] or ""
    text = kind.startswith("text/") or kind in ("application/json", "image/svg+xml")
    if inline or text:
        return FileResponse(path, filename=None if inline else path.name, headers=FILE_HEADERS)
    response = FileResponse(path, filename=path.name, media_type="application/octet-stream", headers=BINARY_HEADERS)
    response.chunk_size = BINARY_CHUNK
    return response


def same_site_action(request: Request) -> None:
    """Refuse a registry change that did not come from the faceattr pages on this server."""
    if request.headers.get(ACTION_HEADER) != "1":
        raise HTTPException(403, f"registry changes need the {ACTION_HEADER} header that the Models page sends")
    origin = request.headers.get("origin")
    if origin and urlsplit(origin).netloc != request.headers.get("host"):
        raise HTTPException(403, "registry changes are accepted from this server's own pages only")
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        raise HTTPException(403, "registry changes are accepted from this server's own pages only")


# Promote and rollback edit what faceattr_train's runs publish: a user Airflow lets edit that DAG.
may_edit_train_dag = requires_access_dag("PUT", param_dag_id=TRAIN_DAG_ID)
CAN_EDIT = [Depends(may_edit_train_dag), Depends(same_site_action)]


@app.get("/", response_class=HTMLResponse)
def runs_page(session: SessionDep) -> str:
    rows = data.runs_table(store())
    notes = dag_run_notes(session)
    for row in rows:
        row["note"] = notes.get(row["dag_run_id"])
        row["name"] = data.run_name(row)
    return pages.runs_page(rows)


@app.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(run_id: str, session: SessionDep) -> str:
    return pages.run_page(view_of(run_id, session))


@app.get("/report/{dag_id}/{dag_run_id:path}", response_class=HTMLResponse)
def training_report(dag_id: str, dag_run_id: str, session: SessionDep) -> str:
    """The "Training report" tab of a DAG run (Airflow shows the tab on every DAG's runs)."""
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
        chosen.append({**view["run"], "curves": view["curves"], "config": view["config"],
                       "attributes": view["attributes"]})
    return compare_html.compare_page(chosen)


@app.get("/runs/{run_id}/files/{name:path}")
def download_file(run_id: str, name: str) -> FileResponse:
    """A file of the run, only from inside its folder: model.pt, config.json, the report, the private CSVs."""
    try:
        run = store().run(data.check_run_id(run_id))
        path = data.download_path(run, name)
    except RunNotFoundError:
        raise HTTPException(404, f"no run {run_id!r}") from None
    except data.NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    # The report's html/svg open inline on Airflow's origin: sandboxed (no scripts, no same-origin
    # cookies or API calls); the report needs only inline CSS and data: images.
    return file_response(path, inline=bool(data.REPORT_FILE.fullmatch(name)) or name == "report")


@app.get("/models", response_class=HTMLResponse)
def models_page(session: SessionDep, versus: str | None = None) -> str:
    view = models.models_view(store(), versus)
    notes = dag_run_notes(session)
    for row in view["rows"]:
        row["name"] = data.run_name({**row, "note": notes.get(row.get("dag_run_id"))})
    return model_pages.models_page(view)


@app.post("/models/promote", dependencies=CAN_EDIT)
def promote(user: GetUserDep, body: dict = Body(...)) -> JSONResponse:
    """Make a run's model the champion by hand: the call `faceattr models promote` makes."""
    run_id, epoch = body.get("run_id"), body.get("epoch")
    if not isinstance(run_id, str) or not (epoch is None or isinstance(epoch, int)):
        raise HTTPException(400, "promote: expected {\"run_id\": \"...\", \"epoch\": N or null}")
    try:
        result = registry.promote(store(), data.check_run_id(run_id), actor=user.get_name(), epoch=epoch)
    except (registry.RegistryError, FileNotFoundError) as exc:
        raise HTTPException(409, str(exc)) from None
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    return JSONResponse(jsonable_encoder(result))


@app.post("/models/rollback", dependencies=CAN_EDIT)
def rollback(user: GetUserDep) -> JSONResponse:
    """Give the championship back to the previous champion: the call `faceattr models rollback` makes."""
    try:
        result = registry.rollback(store(), actor=user.get_name())
    except registry.RegistryError as exc:
        raise HTTPException(409, str(exc)) from None
    return JSONResponse(jsonable_encoder(result))


@app.get("/jobs", response_class=HTMLResponse)
def jobs_page() -> str:
    return model_pages.jobs_page(jobs.jobs_table(store()))


def _job(job_id: str) -> dict[str, Any]:
    try:
        return jobs.job(store(), job_id)
    except data.NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None


@app.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(job_id: str) -> str:
    row = _job(job_id)
    return model_pages.job_page(row, jobs.drift(store(), row))


@app.get("/jobs/{job_id}/files/{name}")
def job_file(job_id: str, name: str) -> FileResponse:
    """A scoring job's predictions.csv or errors.csv, from the path it recorded, inside the data roots."""
    try:
        path = jobs.job_file(_job(job_id), name)
    except data.NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    return file_response(path, inline=False)


@app.get("/api/runs")
def api_runs() -> JSONResponse:
    return JSONResponse(jsonable_encoder(data.runs_table(store())))


@app.get("/api/runs/{run_id}")
def api_run(run_id: str, session: SessionDep) -> JSONResponse:
    view = view_of(run_id, session)
    view["run"] = {k: v for k, v in view["run"].items() if k != "attribute_metrics"}  # in "attributes"
    return JSONResponse(jsonable_encoder(view))


@app.get("/api/runs/{run_id}/live")
def api_live(run_id: str, session: SessionDep) -> JSONResponse:
    """The refreshed figures of a running run: its status and the live part of the Run page."""
    view = view_of(run_id, session)
    return JSONResponse({"status": view["run"]["status"], "html": pages.live_part(view)})
