"""Run a command (`airflow standalone`) until SIGINT, SIGTERM or SIGHUP, then stop it and all it started.

    python scripts/supervise.py --pidfile PATH -- COMMAND ...

Why not bash: a job started in the background by a script (`make airflow > log 2>&1 &`) inherits
SIGINT *ignored*, and bash cannot trap a signal ignored on entry, so Ctrl-C or `kill -INT` did
nothing. Python can install a handler anyway; the command then starts with SIGINT at its default
again (exec resets handled signals), in its own session so that a terminal's Ctrl-C reaches only
this process, which forwards it.

Stopping: SIGINT to the command's process group (Airflow's own graceful shutdown), SIGTERM if
it has not exited GRACE seconds later, SIGKILL after as many again; then whatever it left in its
session (Airflow's task runners sit in process groups of their own) gets SIGTERM and SIGKILL, so
no child outlives this process. Exit status: 128 + the signal that stopped it, else the command's.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

GRACE = 30.0  # seconds airflow standalone gets to stop its components after SIGINT
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def session_pids(sid: int) -> list[int] | None:
    """Live (not zombie) processes of session `sid`; None without /proc (macOS).

    The session, not the process group: Airflow starts each task runner in a process group of its
    own (setpgid), so a training process is outside the command's group but still in its session.
    """
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    found = []
    for entry in proc.iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):  # not a process, or it just ended
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # fields after "(comm)": state, ppid, pgrp, session
            found.append(int(entry.name))
    return found


def signal_leftovers(sid: int, sig: int) -> bool:
    """Send `sig` to every process left in session `sid`; whether there was any."""
    pids = session_pids(sid)
    if pids is None:  # no /proc: the command's group is the best we can reach
        pids = [-sid]
    sent = False
    for pid in pids:
        try:
            os.kill(pid, sig)
            sent = True
        except ProcessLookupError:
            pass
    return sent


def signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def wait_for(done, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if done():
            return True
        time.sleep(0.1)
    return done()


def stop(child: subprocess.Popen, grace: float) -> None:
    """Stop the command (SIGINT, then SIGTERM, then SIGKILL to its group), then whatever it left behind."""
    pgid = child.pid
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        signal_group(pgid, sig)
        if wait_for(lambda: child.poll() is not None, grace):
            break
        print(f"supervise: {child.args[0]} still running {grace:.0f} s after {signal.Signals(sig).name}",
              file=sys.stderr, flush=True)
    sid = child.pid  # start_new_session: the command leads a session of its own
    for sig in (signal.SIGTERM, signal.SIGKILL):  # its orphans: nothing may outlive this process
        if not signal_leftovers(sid, sig):
            return
        wait_for(lambda: not session_pids(sid), 5.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pidfile", type=Path, help="write this process's id here while it runs")
    parser.add_argument("--grace", type=float, default=GRACE, help="seconds per stopping step (%(default)s)")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")

    received: list[int] = []
    for sig in STOP_SIGNALS:  # installed before the command starts, so none is lost
        signal.signal(sig, lambda number, frame: received.append(number))
    if args.pidfile:
        args.pidfile.write_text(f"{os.getpid()}\n")
    try:
        child = subprocess.Popen(command, start_new_session=True)
        while child.poll() is None and not received:
            time.sleep(0.2)
        if received:
            print(f"supervise: {signal.Signals(received[0]).name}: stopping {command[0]}", file=sys.stderr, flush=True)
        stop(child, args.grace)  # also when the command ended by itself: its children go too
    finally:
        if args.pidfile:
            args.pidfile.unlink(missing_ok=True)
    if received:
        return 128 + received[0]
    return 128 - child.returncode if child.returncode < 0 else child.returncode  # killed by a signal: 128+N


if __name__ == "__main__":
    sys.exit(main())
