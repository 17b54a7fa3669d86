"""A real Airflow on loopback runs faceattr_train, triggered through the REST API.

The fixture starts the api-server (a free port on 127.0.0.1), the scheduler (LocalExecutor) and
the dag-processor with a SQLite metadata DB in a temporary AIRFLOW_HOME, and stops each with every
process it forked afterwards (airflow_env.AirflowClient). The test logs in (simple auth manager: POST /auth/token gives a JWT), triggers a
one-epoch run over /api/v2 and polls it to success. Failures carry the services' logs.
"""
from __future__ import annotations

import json
import os
import secrets
import zipfile
from pathlib import Path

import pytest

from airflow_env import AirflowClient, airflow_environ, free_port, migrate, synthetic_source

pytestmark = pytest.mark.slow

SERVICES = {
    "api-server": ["api-server", "--host", "127.0.0.1", "--port", "{port}", "--workers", "1"],
    "scheduler": ["scheduler"],
    "dag-processor": ["dag-processor"],
}


class Airflow(AirflowClient):
    """Running Airflow components and a small client for their REST API."""

    def __init__(self, home: Path, env: dict[str, str], port: int, password: str):
        super().__init__(home, env)
        self.port, self.password = port, password
        self.url = f"http://127.0.0.1:{port}"

    def start(self) -> None:
        for name, args in SERVICES.items():
            self.spawn(name, [arg.format(port=self.port) for arg in args])


@pytest.fixture(scope="module")
def airflow(tmp_path_factory):
    home = tmp_path_factory.mktemp("airflow-services")
    data = home / "data"
    source = synthetic_source(data / "source")
    standing = data / "standing"  # re-scored by faceattr_score whenever a model is published
    standing.mkdir(parents=True)
    with zipfile.ZipFile(source / "img_align_celeba.zip") as archive:
        for name in sorted(n for n in archive.namelist() if n.endswith(".jpg"))[:3]:
            (standing / Path(name).name).write_bytes(archive.read(name))
    port = free_port()
    password = secrets.token_urlsafe(12)
    (home / "passwords.json").write_text(json.dumps({"admin": password}))
    secret = secrets.token_urlsafe(32)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "FACEATTR"))},
        **airflow_environ(home, FACEATTR_MAX_EPOCHS="1"),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__API__SECRET_KEY": secret,
        "AIRFLOW__API_AUTH__JWT_SECRET": secret,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "FACEATTR_HOME": str(data),
        "FACEATTR_DATA_ROOTS": str(data),
        "FACEATTR_DB_URL": f"sqlite:///{data / 'faceattr.db'}",
        "FACEATTR_STANDING_SET": str(standing),
    }
    migrate(home, env)
    services = Airflow(home, env, port, password)
    services.start()
    try:
        yield services
    finally:
        services.stop()


def test_train_dag_runs_under_the_scheduler(airflow):
    airflow.wait_for("the api-server", lambda: airflow.request("GET", "/api/v2/monitor/health")[0] == 200,
                     timeout=180)
    status, body = airflow.request("POST", "/auth/token", {"username": "admin", "password": airflow.password})
    assert status == 201, body
    airflow.token = body["access_token"]
    status, body = airflow.request("POST", "/api/v2/pools", {"name": "gpu", "slots": 1,
                                                             "description": "faceattr GPU work"})
    assert status in (200, 201), (status, body)
    airflow.wait_for("faceattr_train to be parsed",
                     lambda: airflow.request("GET", "/api/v2/dags/faceattr_train")[0] == 200, timeout=180)

    status, body = airflow.request("POST", "/api/v2/dags/faceattr_train/dagRuns",
                                   {"logical_date": None, "conf": {"epochs": 0}})
    assert status == 400 and "epochs" in json.dumps(body), (status, body)

    data = Path(airflow.env["FACEATTR_HOME"])
    # One epoch, only resnet18's head trains: this tests the scheduler, not learning.
    conf = {"source": str(data / "source"), "root": str(data), "output": str(data / "runs"), "arch": "resnet18",
            "weights": "none", "freeze_children": 9, "epochs": 1, "batch_size": 16, "device": "cpu", "num_workers": 0}
    status, body = airflow.request("POST", "/api/v2/dags/faceattr_train/dagRuns", {"logical_date": None, "conf": conf})
    assert status == 200, (status, body)
    run_id = body["dag_run_id"]

    def finished():
        state = airflow.request("GET", f"/api/v2/dags/faceattr_train/dagRuns/{run_id}")[1].get("state")
        return state if state in ("success", "failed") else None

    state = airflow.wait_for(f"run {run_id}", finished, timeout=600, every=5)
    _, body = airflow.request("GET", f"/api/v2/dags/faceattr_train/dagRuns/{run_id}/taskInstances")
    states = {ti["task_id"]: ti["state"] for ti in body["task_instances"]}
    assert state == "success", f"{states}\n{airflow.logs()}"
    assert states == {
        "download": "success", "split": "success", "cache_images": "success", "epoch_01.train": "success", "epoch_01.validate": "success",
        "select_best": "success", "test": "success", "report": "success", "publish_model": "success",
        "announce_champion": "success", "score_private": "skipped",
    }

    _, events = airflow.request("GET", "/api/v2/assets/events?source_dag_id=faceattr_train")
    extras = [event["extra"] for event in events.get("asset_events", [])]
    assert any(extra.get("dag_run_id") == run_id and extra.get("epoch") == 1 for extra in extras), events

    # The published model's asset event starts faceattr_score on the standing set.
    def scored():
        runs = airflow.request("GET", "/api/v2/dags/faceattr_score/dagRuns")[1].get("dag_runs", [])
        done = [run for run in runs if run["state"] in ("success", "failed")]
        return done[0] if done else None

    score_run = airflow.wait_for("faceattr_score triggered by the model asset", scored, timeout=300, every=5)
    assert (score_run["state"], score_run["run_type"]) == ("success", "asset_triggered"), score_run
    written = sorted((data / "scores").glob("*.csv"))  # default output: $FACEATTR_HOME/scores/<run id>.csv
    predictions = [path for path in written if not path.name.endswith(".errors.csv")]
    assert len(predictions) == 1, written
    lines = predictions[0].read_text().splitlines()
    assert lines[0].startswith("image_id,5_o_Clock_Shadow,") and len(lines) == 1 + 3
