"""A throwaway Airflow installation for the DAG tests.

Airflow reads its configuration once, when it is first imported, so `configure()` must run
before anything imports airflow; the DAG test modules call it at import time. The metadata DB
is a SQLite file in a temporary AIRFLOW_HOME, migrated by `airflow db migrate` in a subprocess.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
AIRFLOW = Path(sys.executable).with_name("airflow")
DAGS = REPO / "dags"
MAX_EPOCHS = 3  # epoch task slots parsed in tests; runs ask for fewer to exercise skipping
IMAGES = 60  # synthetic images per test dataset: 48 train, 6 val, 6 test; these tests are about orchestration


def airflow_environ(home: Path, **extra: str) -> dict[str, str]:
    """The variables that point Airflow at `home`, our dags folder and a SQLite DB there."""
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
        "FACEATTR_MAX_EPOCHS": str(MAX_EPOCHS),
        **extra,
    }


def configure() -> Path:
    """Point this process's Airflow at a fresh temporary home; idempotent within a process."""
    home = os.environ.get("FACEATTR_TEST_AIRFLOW_HOME")
    if home is None:
        if "airflow.configuration" in sys.modules:
            raise RuntimeError("airflow was imported before tests/airflow_env.configure(); its settings are fixed")
        home = tempfile.mkdtemp(prefix="faceattr-airflow-")
        os.environ.update(airflow_environ(Path(home)), FACEATTR_TEST_AIRFLOW_HOME=home)
    return Path(home)


def synthetic_source(out: Path) -> Path:
    """A small synthetic dataset in the official distribution layout (the DAG's download source)."""
    from faceattr.synth import generate

    generate(out, n=IMAGES, seed=7)
    return out


def migrate(home: Path, env: dict[str, str] | None = None) -> None:
    """Create the metadata DB with `airflow db migrate` in a subprocess; once per home.

    `env` defaults to this process's environment pointed at `home`. The `gpu` pool is left to the
    callers: dag.test() runs tasks in-process and ignores pools; a scheduler needs it.
    """
    marker = home / ".migrated"
    if marker.exists():
        return
    env = env or {**os.environ, **airflow_environ(home)}
    done = subprocess.run([str(AIRFLOW), "db", "migrate"], env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"airflow db migrate failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    marker.touch()
