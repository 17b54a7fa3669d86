"""One process at a time in a run folder: RUN/.lock, held by flock, refused in one line naming the holder."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from faceattr.run.lock import RunLockedError, run_lock

REPO = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    code = f"from faceattr.run.lock import run_lock\nwith run_lock({str(run)!r}, 'other'):\n    pass\n"
    with run_lock(run, "faceattr fit"):
        result = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True)
    assert result.returncode != 0
    assert f"in use by pid {os.getpid()} (faceattr fit) on " in result.stderr
    with run_lock(run, "again"):  # released on exit
        pass


def test_the_lock_is_reentrant_in_one_process(tmp_path):
    with run_lock(tmp_path, "outer"), run_lock(tmp_path, "inner"):
        pass


def test_the_lock_dies_with_its_process(tmp_path):
    code = ("import sys, time\nfrom faceattr.run.lock import run_lock\n"
            f"with run_lock({str(tmp_path)!r}, 'killed'):\n    print('held', flush=True)\n    time.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match="killed"):
            with run_lock(tmp_path, "second"):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with run_lock(tmp_path, "after the kill"):
        pass


def test_a_missing_run_folder_is_refused_without_creating_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such run folder"):
        with run_lock(tmp_path / "nope", "faceattr select"):
            pass
    assert not (tmp_path / "nope").exists()


def test_a_second_fit_on_one_run_folder_is_refused(tmp_path, synth_root):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}\n")
    before = _digests(run)
    with run_lock(run, "faceattr fit"):
        result = subprocess.run(
            [sys.executable, "-m", "faceattr.cli", "fit", "--run", str(run), "--root", str(synth_root), "--arch",
             "resnet18", "--weights", "none", "--epochs", "1", "--batch-size", "8", "--num-workers", "0",
             "--device", "cpu"], env=_env(), capture_output=True, text=True)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and f"in use by pid {os.getpid()} (faceattr fit)" in lines[0], result.stderr
    after = _digests(run)
    after.pop(".lock", None)
    before.pop(".lock", None)
    assert after == before  # the second fit wrote nothing
