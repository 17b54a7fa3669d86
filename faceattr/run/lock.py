"""One process at a time in a run folder: an OS lock on RUN/.lock.

fit, split, train, evaluate, select, test, predict into a run and each Airflow task take it; a
second process is refused at once with one line naming the holder (pid, command, host, written in
the lock file). The lock is flock(2) on the open file, so it dies with its process, however that
ends; the file itself stays (a hidden file, never pushed to the object store). Re-entrant within a
process: `faceattr fit` holds it while its stages take it again.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
from pathlib import Path
from typing import Iterator

from faceattr.run.layout import RunLayout


class RunLockedError(RuntimeError):
    """Another process is working in the run folder."""


_held: dict[Path, int] = {}  # run folder (resolved) -> how many times this process holds it
_guard = threading.Lock()


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike, command: str, *, create: bool = False) -> Iterator[None]:
    """Hold RUN/.lock while the body runs. create=True makes the run folder (split, fit); otherwise a
    folder that does not exist is refused without creating anything."""
    run_dir = Path(run_dir)
    made = not run_dir.is_dir()
    if made:
        if not create:
            raise FileNotFoundError(f"{run_dir}: no such run folder; start it with 'faceattr split' or 'faceattr fit'")
        run_dir.mkdir(parents=True, exist_ok=True)
    try:
        with _locked(run_dir, command):
            yield
    finally:
        if made and [p.name for p in run_dir.iterdir()] == [RunLayout(run_dir).lock.name]:
            RunLayout(run_dir).lock.unlink()  # nothing came of it: leave no folder behind
            run_dir.rmdir()


@contextlib.contextmanager
def _locked(run_dir: Path, command: str) -> Iterator[None]:
    key = run_dir.resolve()
    with _guard:
        if _held.get(key):
            _held[key] += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield
        finally:
            with _guard:
                _held[key] -= 1
        return

    path = RunLayout(run_dir).lock
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLockedError(f"{run_dir}: in use by {_holder(fd)}; wait for it to finish, or stop it") from None
        holder = {"pid": os.getpid(), "command": command, "host": socket.gethostname()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        with _guard:
            _held[key] = 1
        try:
            yield
        finally:
            with _guard:
                _held.pop(key, None)
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock


def _holder(fd: int) -> str:
    """Who holds the lock, as its holder wrote it."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {info['pid']} ({info['command']}) on {info['host']}"
    except (ValueError, KeyError, TypeError, OSError):
        return "another process (it has not said which yet)"
