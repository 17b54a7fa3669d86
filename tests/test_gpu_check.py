"""benchmarks/gpu_check.py: its CPU dry run writes one JSON file per section as it goes, survives a
section that hangs or kills its own process, keeps to its deadline; its import blocker really blocks."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def _check(out: Path, *args: str, timeout: float, simulate: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO),  # as on the device: the checkout, not an installed package
           "FACEATTR_GPU_CHECK_SIMULATE": simulate}
    return subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=REPO)


def _read(out: Path, name: str) -> dict:
    return json.loads((out / f"{name}.json").read_text())


def test_the_blocker_refuses_airflow_and_sqlalchemy():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from gpu_common import BLOCKER
    finally:
        sys.path.remove(str(SCRIPT.parent))
    for module in ("sqlalchemy", "airflow.models"):
        done = subprocess.run([sys.executable, "-c", BLOCKER + f"\nimport {module}"], capture_output=True, text=True,
                              timeout=120)
        top = module.split(".")[0]  # importing a submodule imports its package first
        assert done.returncode != 0 and f"gpu_check: {top} imported" in done.stderr, done.stderr[-1000:]


def test_a_hung_and_a_killed_section_leave_their_errors_and_the_next_section_still_runs(tmp_path):
    out = tmp_path / "out"
    done = _check(out, "--only", "env", "imports", "fixed_cost", "--limit", "env=3", timeout=300,
                  simulate="env=hang,imports=kill")
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["env.json", "fixed_cost.json", "imports.json", "summary.json"]
    assert _read(out, "env")["error"] == "timed out after 3 s (its limit)"
    assert _read(out, "imports")["error"] == "its process was killed by signal SIGKILL"
    fixed = _read(out, "fixed_cost")
    assert "error" not in fixed and fixed["images"] == fixed["rows_parsed"] > 0 and fixed["upload_s"] > 0
    lines = done.stdout.splitlines()
    assert [line.split(":")[1].strip() for line in lines[:3]] == ["env", "fixed_cost", "imports"]  # the check's order
    assert "FAILED: timed out" in lines[0] and " ok in " in lines[1] and "FAILED: its process was killed" in lines[2]
    assert _read(out, "summary")["failed_sections"] == ["env", "imports"]


def test_sections_past_the_deadline_are_skipped_with_a_file_each(tmp_path):
    out = tmp_path / "out"
    done = _check(out, "--only", "env", "imports", "--budget-s", "3", timeout=120, simulate="env=hang")
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert _read(out, "env")["error"].startswith("timed out after")
    assert "deadline" in _read(out, "imports")["skipped"]


def test_the_section_limits_fit_the_default_budget():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(SCRIPT.parent))
    assert sum(limit for _, limit in gpu_check.SECTIONS) <= gpu_check.DEFAULT_BUDGET_S
    assert [name for name, _ in gpu_check.SECTIONS][1:4] == ["steady_loop", "scoring", "pipeline"]  # headlines first


def test_the_projection_adds_the_measured_parts_per_stage():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(SCRIPT.parent))
    sections = {
        "steady_loop": {"images_per_second": {"cudnn_benchmark_on": 16_277.0}},
        "scoring": {"rate_img_s": 19_867.0},
        "fixed_cost": {"upload_s": 8.0, "labels_parse_s": 1.0},
        "pipeline": {"images": 1000, "tasks": {
            "train_epoch_2": {"fixed_s": 6.0, "metrics": {"upload_s": 1.0}},
            "validate_epoch_2": {"wall_s": 5.0}, "select": {"wall_s": 3.0}, "cache": {"wall_s": 2.0}}},
    }
    plan = gpu_check.projection(sections)
    assert plan["missing"] == []
    assert plan["stages"]["train_epoch"]["seconds"] == round(6.0 - 1.0 + 8.0 + 1.0 + 10.0, 1)
    assert plan["stages"]["validate_epoch"]["seconds"] == 5.0 + 1.0 + 1.0
    assert plan["total_minutes"] == round((12 * 24.0 + 12 * 7.0 + 7.0 + 1.0 * 19_962 / 19_867 + 3.0
                                           + 2.0 / 1000 * 202_599) / 60, 1)
    assert gpu_check.projection({})["total_minutes"] is None


@pytest.mark.slow
def test_the_dry_run_goes_through_every_section(tmp_path):
    """A few minutes on two shared cores: a synthetic run's eight tasks, each its own process."""
    out = tmp_path / "out"
    done = _check(out, timeout=1500)
    summary = _read(out, "summary")
    assert done.returncode == 0 and summary["failed_sections"] == [], summary["failed_sections"]
    sections = summary["sections"]
    names = ["env", "steady_loop", "scoring", "pipeline", "fixed_cost", "cuda_tests", "nvjpeg", "sync_sites", "imports"]
    assert list(sections) == names and all((out / f"{name}.json").is_file() for name in names)
    tasks = sections["pipeline"]["tasks"]
    assert list(tasks) == ["split", "cache", "train_epoch_1", "train_epoch_2", "validate_epoch_1", "validate_epoch_2",
                           "select", "test"]
    assert all(task["rc"] == 0 for task in tasks.values())
    for epoch in (1, 2):
        metrics = tasks[f"train_epoch_{epoch}"]["metrics"]
        assert metrics["images"] > 0 and {"upload_s", "loop_s", "task_s"} <= set(metrics)
    # The CUDA tests ran (skipped on a CPU, passed on a GPU): none failed.
    assert sections["cuda_tests"]["tests"] >= 3 and sections["cuda_tests"]["failures"] == sections["cuda_tests"]["errors"] == 0
    files = sections["nvjpeg"]["files"]
    assert files["good"]["faceattr"]["outcome"] == files["gray"]["faceattr"]["outcome"] == "row"
    assert files["corrupt_truncated"]["faceattr"]["outcome"].startswith("error: ")
    runs = sections["scoring"]["runs"]
    assert [run["rows"] for run in runs.values()] == [int(n) for n in runs] and sections["scoring"]["rate_img_s"] > 0
    assert set(sections["steady_loop"]["images_per_second"]) == {"cudnn_benchmark_off", "cudnn_benchmark_on"}
    assert all(str(value).startswith("unmeasured") for value in summary["targets"].values())
    assert summary["projection_12_epochs_full_celeba"]["missing"] == []
    assert "12 epochs of full CelebA" in done.stdout
