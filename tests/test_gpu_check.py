"""benchmarks/gpu_check.py: its CPU dry run prints one JSON summary, and its import blocker really blocks."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def _check(*args: str, timeout: float) -> tuple[subprocess.CompletedProcess, dict]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # as on the device: the checkout, not an installed package
    done = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout[-2000:] + done.stderr[-2000:]  # one JSON summary, nothing else
    return done, json.loads(lines[0])


def test_the_blocker_refuses_airflow_and_sqlalchemy():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from gpu_sections import BLOCKER
    finally:
        sys.path.remove(str(SCRIPT.parent))
    for module in ("sqlalchemy", "airflow.models"):
        done = subprocess.run([sys.executable, "-c", BLOCKER + f"\nimport {module}"], capture_output=True, text=True,
                              timeout=120)
        top = module.split(".")[0]  # importing a submodule imports its package first
        assert done.returncode != 0 and f"gpu_check: {top} imported" in done.stderr, done.stderr[-1000:]


def test_the_library_paths_import_without_airflow_or_sqlalchemy():
    done, summary = _check("--only", "env", "imports", timeout=300)
    assert done.returncode == 0, summary
    assert summary["sections"]["imports"]["ok"] is True and "faceattr.engine.predict" in summary["sections"]["imports"]["modules"]
    assert summary["sections"]["env"]["device"] == "cpu" and summary["failed_sections"] == []


@pytest.mark.slow
def test_the_dry_run_goes_through_every_section():
    """About 2 minutes on two shared cores: a synthetic run's eight tasks, each its own process."""
    done, summary = _check(timeout=900)
    assert done.returncode == 0 and summary["failed_sections"] == [], summary["failed_sections"]
    sections = summary["sections"]
    assert set(sections) == {"env", "imports", "nvjpeg", "cuda_tests", "pipeline", "steady_loop", "sync_sites", "scoring"}
    tasks = sections["pipeline"]["tasks"]
    assert list(tasks) == ["split", "cache", "train_epoch_1", "train_epoch_2", "validate_epoch_1", "validate_epoch_2",
                           "select", "test"]
    assert all(task["rc"] == 0 for task in tasks.values())
    for epoch in (1, 2):
        metrics = tasks[f"train_epoch_{epoch}"]["metrics"]
        assert metrics["images"] > 0 and {"upload_s", "loop_s", "task_s"} <= set(metrics)
    # Without a GPU the CUDA tests skip (under FACEATTR_REQUIRE_CUDA=1 on the device they must pass).
    assert sections["cuda_tests"]["skipped"] == sections["cuda_tests"]["tests"] >= 3
    files = sections["nvjpeg"]["files"]
    assert files["good"]["faceattr"]["outcome"] == files["gray"]["faceattr"]["outcome"] == "row"
    assert files["corrupt_truncated"]["faceattr"]["outcome"].startswith("error: ")
    runs = sections["scoring"]["runs"]
    assert [run["rows"] for run in runs.values()] == [int(n) for n in runs] and sections["scoring"]["rate_img_s"] > 0
    assert set(sections["steady_loop"]["images_per_second"]) == {"cudnn_benchmark_off", "cudnn_benchmark_on"}
    assert all(str(value).startswith("unmeasured") for value in summary["targets"].values())
