"""Deployment files: airflow.cfg.example is accepted by Airflow; the compose file validates."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from support import REPO, STRICT

AIRFLOW = Path(sys.executable).with_name("airflow")


def _airflow_config(tmp_path: Path, *args: str) -> str:
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path), "AIRFLOW_CONFIG": str(REPO / "airflow.cfg.example")}
    env = {k: v for k, v in env.items() if not k.startswith("AIRFLOW__")}
    done = subprocess.run(
        [str(AIRFLOW), "config", *args], env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


def test_airflow_accepts_example_config(tmp_path):
    assert _airflow_config(tmp_path, "get-value", "core", "executor") == "CeleryExecutor"
    assert _airflow_config(tmp_path, "get-value", "celery", "broker_url").startswith("redis://")
    assert _airflow_config(tmp_path, "get-value", "database", "sql_alchemy_conn").startswith("postgresql")
    assert _airflow_config(tmp_path, "get-value", "core", "load_examples") == "False"


def test_every_changed_setting_says_why():
    lines = (REPO / "airflow.cfg.example").read_text().splitlines()
    for number, line in enumerate(lines, 1):
        if "=" in line and not line.lstrip().startswith("#"):
            assert lines[number - 2].lstrip().startswith("#"), f"airflow.cfg.example:{number} has no comment: {line}"


def _compose_config() -> dict:
    if shutil.which("docker-compose") is None:
        message = "docker-compose (Debian package) is not installed"
        if STRICT:
            pytest.fail(message + "; .ci/run installs it")
        pytest.skip(message)
    done = subprocess.run(
        ["docker-compose", "-f", str(REPO / "docker/docker-compose.yaml"), "config"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def _command(service: dict) -> str:
    command = service["command"]
    return command if isinstance(command, str) else " ".join(command)


def test_compose_file_validates_and_has_the_stack():
    services = _compose_config()["services"]
    expected = {
        "postgres", "redis", "airflow-init", "airflow-apiserver", "airflow-scheduler",
        "airflow-dag-processor", "airflow-triggerer", "airflow-worker-cpu", "airflow-worker-gpu",
    }
    assert expected <= set(services)
    assert "--queues gpu" in _command(services["airflow-worker-gpu"])
    assert "--queues default" in _command(services["airflow-worker-cpu"])
    devices = services["airflow-worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia"
    for name, service in services.items():
        if name != "airflow-init":
            assert "healthcheck" in service, f"{name} has no health check"
    # One volume for data and artifacts, shared by every Airflow component.
    for name, service in services.items():
        if name.startswith("airflow-"):
            targets = [v["target"] if isinstance(v, dict) else v.split(":")[1] for v in service["volumes"]]
            assert "/opt/faceattr/shared" in targets, name
