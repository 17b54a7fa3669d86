"""`make airflow` (scripts/airflow.sh) and the faceattr command stop on SIGINT however they were started.

A job started in the background by a script (`make airflow > log 2>&1 &`) inherits SIGINT
ignored; these tests start the processes that way (and, for comparison, as a terminal's
foreground job) and check that SIGINT stops them with nothing left behind. `airflow` is replaced
by a stand-in on PATH whose `standalone` starts two children, one of which ignores SIGINT in a
process group of its own (as Airflow starts task runners), and exits without waiting for them: the sloppiest shutdown scripts/supervise.py must clean up after.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FACEATTR = Path(sys.executable).with_name("faceattr")

FAKE_AIRFLOW = """#!/usr/bin/env bash
# Stand-in for airflow: set-up commands succeed; standalone runs the fake below.
[ "$1" = standalone ] && exec "{python}" "{here}/standalone.py"
exit 0
"""
FAKE_STANDALONE = """
import os, signal, subprocess, sys, time
children = [
    subprocess.Popen(["sleep", "300"]),
    # Like Airflow's task runners: a process group of its own, out of reach of a killpg on the command's.
    subprocess.Popen([sys.executable, "-c",
                      "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(300)"],
                     preexec_fn=lambda: os.setpgid(0, 0)),
]
with open(os.environ["FAKE_PIDS"], "w") as handle:
    handle.write(" ".join(str(p) for p in [os.getpid()] + [c.pid for c in children]))
try:
    time.sleep(300)
except KeyboardInterrupt:
    sys.exit(0)  # leaves its children running
"""


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def ignore_sigint():
    """What a non-interactive shell does for a command it starts with `&`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.fixture
def fake_airflow(tmp_path) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "standalone.py").write_text(FAKE_STANDALONE)
    script = bin_dir / "airflow"
    script.write_text(FAKE_AIRFLOW.format(python=sys.executable, here=bin_dir))
    script.chmod(0o755)
    home = tmp_path / "airflow-home"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
        "AIRFLOW_HOME": str(home),  # read by nothing here but kept off the repository's .airflow
        "FACEATTR_HOME": str(tmp_path / "data"),
        "FAKE_PIDS": str(tmp_path / "pids"),
        "AIRFLOW__API__PORT": "1",
    }
    return {"env": env, "pids": tmp_path / "pids", "tmp": tmp_path}


def start_airflow_sh(fake: dict, *, background_of_a_script: bool) -> subprocess.Popen:
    script = fake["tmp"] / "airflow.sh"  # the real script, pointed at a temporary AIRFLOW_HOME
    text = (REPO / "scripts" / "airflow.sh").read_text()
    text = text.replace('cd "$(dirname "$0")/.."', f'cd "{REPO}"').replace(
        'export AIRFLOW_HOME="$REPO/.airflow"', f'export AIRFLOW_HOME="{fake["env"]["AIRFLOW_HOME"]}"')
    script.write_text(text)
    log = open(fake["tmp"] / "airflow.log", "wb")
    return subprocess.Popen(["bash", str(script)], env=fake["env"], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True,  # its own group, so the test can look for leftovers
                            preexec_fn=ignore_sigint if background_of_a_script else None)


@pytest.mark.parametrize("background_of_a_script", [True, False], ids=["background-job", "terminal"])
def test_make_airflow_stops_on_sigint_and_leaves_no_child(fake_airflow, background_of_a_script):
    process = start_airflow_sh(fake_airflow, background_of_a_script=background_of_a_script)
    try:
        wait_until(lambda: fake_airflow["pids"].is_file() and fake_airflow["pids"].read_text().strip(), 60,
                   "the fake standalone to start its children")
        pids = [int(p) for p in fake_airflow["pids"].read_text().split()]
        assert all(alive(pid) for pid in pids)
        pidfile = Path(fake_airflow["env"]["AIRFLOW_HOME"]) / "airflow.pid"
        assert int(pidfile.read_text()) == process.pid  # airflow.sh execs the supervisor
        if background_of_a_script:
            os.kill(int(pidfile.read_text()), signal.SIGINT)  # what `kill -INT $(cat .airflow/airflow.pid)` does
        else:
            os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: the whole foreground group
        returncode = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    log = (fake_airflow["tmp"] / "airflow.log").read_text()
    assert returncode == 128 + signal.SIGINT, log
    wait_until(lambda: not any(alive(pid) for pid in pids), 10, "every child to be gone")
    assert not pidfile.exists()


def test_make_airflow_stops_on_sigterm(fake_airflow):
    """What `kill` of the make process does: make sends SIGTERM to its recipe, the supervisor."""
    process = start_airflow_sh(fake_airflow, background_of_a_script=True)
    try:
        wait_until(lambda: fake_airflow["pids"].is_file() and fake_airflow["pids"].read_text().strip(), 60,
                   "the fake standalone")
        pids = [int(p) for p in fake_airflow["pids"].read_text().split()]
        process.terminate()
        assert process.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    wait_until(lambda: not any(alive(pid) for pid in pids), 10, "every child to be gone")


@pytest.mark.parametrize("background_of_a_script", [True, False], ids=["background-job", "terminal"])
def test_faceattr_exits_130_on_sigint(tmp_path, background_of_a_script):
    out = tmp_path / "synth"
    process = subprocess.Popen([str(FACEATTR), "synth", "--out", str(out), "--n", "20000"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=ignore_sigint if background_of_a_script else None)
    try:
        # A file in the output folder: the command is past its imports, at work.
        wait_until(lambda: (out.is_dir() and any(out.iterdir())) or process.poll() is not None, 120,
                   "faceattr synth to start writing")
        assert process.poll() is None, process.communicate()
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    assert "faceattr synth: interrupted" in stderr
