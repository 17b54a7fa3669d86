"""The Airflow plugin: a "faceattr" nav entry, a "Training report" tab on DAG runs, and the app behind both.

Light on purpose: every Airflow process that loads plugins (each task process too) imports this
module; only the API server reads `fastapi_apps`, which builds the app on first use.
"""
from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from faceattr.ui.pages import PREFIX  # light: html and the SVG charts only


class FaceattrPlugin(AirflowPlugin):
    name = "faceattr"
    external_views = [
        # The UI shows a nav view at /plugin/<url_route>, in an iframe on href.
        {"name": "faceattr", "href": f"{PREFIX}/", "destination": "nav", "url_route": "faceattr"},
        # A tab on every DAG run page (the UI cannot limit it to one DAG; other DAGs get a short note).
        # The UI fills in {DAG_ID} and {RUN_ID}, URL-encoded.
        {"name": "Training report", "href": f"{PREFIX}/report/{{DAG_ID}}/{{RUN_ID}}", "destination": "dag_run",
         "url_route": "faceattr-training-report"},
    ]

    @property
    def fastapi_apps(self) -> list[dict]:  # type: ignore[override]
        # Here, not at the top: the app loads FastAPI and Airflow's API security code, which only the
        # API server needs; every other Airflow process imports this module too.
        from faceattr.ui.app import app

        # "name" is required: without it Airflow's plugin listing drops the whole plugin (no nav, no tab).
        return [{"app": app, "url_prefix": PREFIX, "name": "faceattr"}]
