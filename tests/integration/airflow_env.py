"""A throwaway Airflow installation for the DAG tests.

Airflow reads its configuration once, when it is first imported, so `configure()` must run
before anything imports airflow; the DAG test modules call it at import time. The metadata DB
is a SQLite file in a temporary AIRFLOW_HOME, migrated by `airflow db migrate` in a subprocess.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
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
    from faceattr.synth.files import generate

    generate(out, n=IMAGES, seed=7)
    return out


def unlabelled_faces(source: Path, folder: Path, count: int) -> Path:
    """The first `count` faces of a synthetic source as unlabelled images face_0.jpg, ... (private images)."""
    import zipfile

    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(source / "img_align_celeba.zip") as archive:
        names = sorted(n for n in archive.namelist() if n.endswith(".jpg"))[:count]
        for i, name in enumerate(names):
            (folder / f"face_{i}.jpg").write_bytes(archive.read(name))
    return folder


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class AirflowClient:
    """Airflow components running as processes, and a small client for the api-server's REST API;
    shared by the scheduler and Celery tests (subclasses set `url` and log in to set `token`).

    Each component runs in its own session, i.e. its own process group, so stopping it reaches
    everything it forked (LocalExecutor workers, uvicorn, Celery's pool): a stopped component
    leaves no process behind.
    """

    url: str
    token: str | None = None

    def __init__(self, home: Path, env: dict[str, str]):
        self.home, self.env = home, env
        self.processes: dict[str, subprocess.Popen] = {}
        self.logfiles: dict[str, Path] = {}

    # -- processes ------------------------------------------------------------------------------
    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        """`airflow ARGS...` as component `name`, its output appended to HOME/<name>.log."""
        path = self.home / f"{name}.log"
        self.logfiles[name] = path
        with open(path, "ab") as log:
            process = subprocess.Popen([str(AIRFLOW), *args], env={**self.env, **(env or {})}, stdout=log,
                                       stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
        self.processes[name] = process
        return process

    def kill(self, name: str) -> None:
        """SIGKILL a component and everything it forked: a machine lost mid-task."""
        process = self.processes.pop(name)
        _end_group(process, signal.SIGKILL, grace=0)

    def stop(self, grace: float = 30) -> None:
        """SIGTERM every component's process group, SIGKILL what is left after `grace` seconds, and
        wait until each group is gone."""
        for process in self.processes.values():
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in self.processes.values():
            _end_group(process, signal.SIGKILL, grace=max(0.0, deadline - time.monotonic()))
        self.processes.clear()

    def logs(self, tail: int = 4000) -> str:
        parts = []
        for name, path in self.logfiles.items():
            text = path.read_text(errors="replace") if path.exists() else "(no log)"
            parts.append(f"----- {name} ({path}, last {tail} characters) -----\n{text[-tail:]}")
        return "\n".join(parts)

    # -- REST API -------------------------------------------------------------------------------
    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")

    def wait_for(self, what: str, check, timeout: float, every: float = 2.0):
        """Poll check() until truthy; fail with the services' logs when a service dies or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise AssertionError(f"{name} exited with {process.returncode} while waiting for {what}\n"
                                         + self.logs())
            try:
                result = check()
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                result = None
            if result:
                return result
            time.sleep(every)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n" + self.logs())


def _signal_group(process: subprocess.Popen, sig: int) -> bool:
    """Send `sig` to the process group `process` leads; False when no process of it is left."""
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        return False
    return True


def _end_group(process: subprocess.Popen, sig: int, grace: float) -> None:
    """Wait up to `grace` s for the leader, then send `sig` to its group and wait until the group is empty."""
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(process, sig)
    process.wait(timeout=30)
    deadline = time.monotonic() + 30
    while left := _live_members(process.pid):  # the signal reaches children too; wait until they are gone
        if time.monotonic() > deadline:
            raise RuntimeError(f"{process.args[:3]}: processes {left} of its group outlived SIGKILL")
        time.sleep(0.1)


def _live_members(group: int) -> list[int]:
    """PIDs in process group `group`, zombies aside (init reaps those whenever it gets to them)."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:  # exited while we looked
            continue
        state, _, pgrp = stat.rsplit(")", 1)[1].split()[:3]  # after "pid (comm)": state, ppid, pgrp
        if int(pgrp) == group and state != "Z":
            members.append(int(entry.name))
    return members
