"""The GPU check: one call on a device machine; every section's figures written as soon as it is done.

    PYTHONPATH=. python benchmarks/gpu_check.py --out DIR            # on a CUDA machine, within --budget-s
    PYTHONPATH=. python benchmarks/gpu_check.py --out DIR --dry-run  # anywhere: CPU, tiny sizes, same code paths

Each section runs in a process of its own with its own time limit: a section that hangs, crashes
or kills its process costs its limit and leaves an error in its file, and the next one starts.
DIR/<section>.json is written the moment the section ends, with one summary line on stdout; at the
end DIR/summary.json gathers them with the targets and the projection of a 12-epoch full-CelebA
run, which is also printed stage by stage. The headline sections come first:

    env          Python, torch, torchvision, device, cuDNN
    steady_loop  the training loop on a device-resident cache, cuDNN autotuning off and on (a fresh
                 process each: cuDNN's plan cache would carry the first setting's plans over)
    scoring      faceattr predict at two set sizes: the rate and the fixed cost apart, and the
                 end-to-end rate that gives for 200,000 files
    pipeline     split -> cache -> train epoch 1 (cold compile cache) -> epoch 2 (warm) -> validate
                 -> select -> test, each as its own `faceattr` process like an Airflow task
    fixed_cost   an epoch task's fixed cost at CelebA's train size: label parsing and the upload of a
                 162,770-image cache
    cuda_tests   the tests marked `cuda`, with FACEATTR_REQUIRE_CUDA=1 (a skip is a failure)
    nvjpeg       decode_jpeg on the device for a good, a gray, an odd-size and three corrupt JPEGs
    sync_sites   host-device synchronisations in the training loop and in scoring, by source line
    imports      the library paths import without Airflow or SQLAlchemy (blocked)

Every library path runs with Airflow and SQLAlchemy blocked: the device has neither.
FACEATTR_GPU_CHECK_SIMULATE="section=hang,other=kill" makes those sections hang or SIGKILL their
own process (the tests of this script use it).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# name, seconds it may take on a GPU: the limits add up to DEFAULT_BUDGET_S, so every section fits.
# The headline sections get the most room: a cold torch.compile of ResNeXt50 alone can take a minute.
SECTIONS = [("env", 15), ("steady_loop", 110), ("scoring", 55), ("pipeline", 140), ("fixed_cost", 45),
            ("cuda_tests", 65), ("nvjpeg", 15), ("sync_sites", 15), ("imports", 20)]
# 8 minutes: the device call runs it with a ~540 s limit, so the check ends, summary included, inside it.
DEFAULT_BUDGET_S = 480
assert sum(limit for _, limit in SECTIONS) <= DEFAULT_BUDGET_S
# A dry run on a CPU takes longer than the GPU limits (several minutes for the pipeline on two cores).
DRY_RUN_LIMIT_S, DRY_RUN_BUDGET_S = 600, 1800
SIMULATE = "FACEATTR_GPU_CHECK_SIMULATE"
# Full CelebA (list_eval_partition.txt's sizes): what the projection of a 12-epoch run is made for.
CELEBA_TRAIN, CELEBA_VAL, CELEBA_TEST = 162_770, 19_867, 19_962


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for one JSON file per section and summary.json")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: checks the script, measures nothing")
    parser.add_argument("--budget-s", type=float,
                        help=f"hard deadline for the whole check (default {DEFAULT_BUDGET_S}; {DRY_RUN_BUDGET_S} dry)")
    parser.add_argument("--limit", action="append", default=[], metavar="SECTION=SECONDS",
                        help="a section's own time limit instead of its default (tests)")
    parser.add_argument("--only", nargs="*", help="run only these sections")
    parser.add_argument("--section", help=argparse.SUPPRESS)  # the child: run this one section
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.section:
        return run_section(args)
    names = [name for name, _ in SECTIONS]
    try:
        limits = {name: float(seconds) for name, seconds in (item.split("=", 1) for item in args.limit)}
    except ValueError:
        parser.error(f"--limit: expected SECTION=SECONDS, got {' '.join(args.limit)}")
    unknown = sorted((set(args.only or ()) | set(limits)) - set(names))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(names)}")

    if args.budget_s is None:
        args.budget_s = DRY_RUN_BUDGET_S if args.dry_run else DEFAULT_BUDGET_S
    deadline = time.time() + args.budget_s
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="faceattr-gpu-check-") as work:
        for name, limit in SECTIONS:
            if args.only and name not in args.only:
                continue
            if args.dry_run:
                limit = DRY_RUN_LIMIT_S
            limit = limits.get(name, limit)
            left = deadline - time.time()
            if left < 1:
                result = {"skipped": f"the check's deadline ({args.budget_s:.0f} s) has passed"}
            else:
                result = spawn(name, min(limit, left), args, Path(work))
            write(args.out / f"{name}.json", result)
            results[name] = result
            print(f"gpu_check: {name}: {brief(result)}", flush=True)
            if name == "env" and not args.dry_run and result.get("cuda_available") is not True:
                print("gpu_check: no usable CUDA device (torch.cuda.is_available() is not True); use --dry-run on "
                      "a CPU", flush=True)
                return 1
    return finish(results, args)


def spawn(name: str, limit: float, args, work: Path) -> dict:
    """Run one section in a child process of its own session; kill it all at `limit` seconds."""
    command = [sys.executable, str(Path(__file__).resolve()), "--section", name, "--out", str(args.out),
               "--work", str(work), "--deadline", str(time.time() + limit)] + (["--dry-run"] if args.dry_run else [])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    (args.out / f"{name}.json").unlink(missing_ok=True)
    start = time.time()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO,
                               start_new_session=True)
    try:
        _, stderr = process.communicate(timeout=limit)
        problem = None if process.returncode == 0 else describe_exit(process.returncode)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the section and whatever it started
        _, stderr = process.communicate()
        problem = f"timed out after {limit:.0f} s (its limit)"
    seconds = round(time.time() - start, 2)
    written = args.out / f"{name}.json"
    if written.is_file():
        try:
            result = json.loads(written.read_text())
        except ValueError:
            result = {"error": f"{written}: not valid JSON"}
    else:
        result = {"error": problem or "the section's process wrote no result"}
    if problem and "error" not in result:
        result["error"] = problem
    if "error" in result and stderr:
        result["stderr_tail"] = "\n".join(stderr.decode(errors="replace").strip().splitlines()[-8:])
    result["seconds"] = seconds
    return result


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        return f"its process was killed by signal {signal.Signals(-returncode).name}"
    return f"its process exited with status {returncode}"


def run_section(args) -> int:
    """The child: install the blocker, run the section, write its JSON (atomically) before exiting."""
    simulated = dict(item.split("=", 1) for item in os.environ.get(SIMULATE, "").split(",") if "=" in item)
    if simulated.get(args.section) == "hang":
        time.sleep(10**6)
    if simulated.get(args.section) == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    # Imported here, in the child only: the parent stays free of torch and faceattr so that a section
    # that crashes takes nothing else with it; and the blocker must be in place before faceattr loads.
    from gpu_common import BLOCKER

    exec(BLOCKER)  # noqa: S102
    import logging
    import traceback

    import torch

    import gpu_sections
    import gpu_timings
    from gpu_common import Sizes, line, tail

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    function = getattr(gpu_sections, f"{args.section}_section", None) or getattr(gpu_timings, f"{args.section}_section")
    ctx = {"device": torch.device("cpu" if args.dry_run else "cuda"), "sizes": Sizes(args.dry_run), "work": args.work,
           "deadline": args.deadline}
    try:
        result = function(ctx)
    except Exception as exc:  # noqa: BLE001 - recorded in the section's file
        result = {"error": f"{type(exc).__name__}: {line(exc)}", "traceback": tail(traceback.format_exc(), 8)}
    write(args.out / f"{args.section}.json", result)
    return 0


def write(path: Path, result: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, default=str, indent=1))
    os.replace(tmp, path)


def brief(result: dict) -> str:
    """One short line: ok or the error, the seconds, and the section's headline figures."""
    if isinstance(result.get("skipped"), str):  # the section (cuda_tests' "skipped" counts tests)
        return f"skipped ({result['skipped']})"
    if "error" in result:
        state = "FAILED: " + " ".join(str(result["error"]).split())[:200]
    else:
        state = "FAILED" if failed(result) else "ok"
    headline = {key: result[key] for key in ("images_per_second", "rate_img_s", "fixed_s", "upload_s", "labels_parse_s",
                                             "device_name", "failed_at", "tests", "failures", "errors", "skipped")
                if key in result}
    return f"{state} in {result.get('seconds', '?')} s" + (f"; {json.dumps(headline, default=str)}" if headline else "")


def failed(result: dict) -> bool:
    return bool("error" in result or result.get("failures") or result.get("errors") or result.get("ok") is False
                or "failed_at" in result)


def finish(results: dict, args) -> int:
    summary = {"check": "gpu_check", "dry_run": args.dry_run, "sections": results,
               "failed_sections": [name for name, result in results.items() if failed(result)],
               "targets": targets(results, args.dry_run),
               "projection_12_epochs_full_celeba": projection(results)}
    write(args.out / "summary.json", summary)
    plan = summary["projection_12_epochs_full_celeba"]
    label = " (dry run: CPU figures, not a projection)" if args.dry_run else ""
    for stage, figures in plan["stages"].items():
        print(f"gpu_check: projection{label}: {stage}: {figures['seconds']} s x {figures['times']}", flush=True)
    print(f"gpu_check: projection{label}: 12 epochs of full CelebA: "
          f"{plan['total_minutes'] if plan['total_minutes'] is not None else 'unknown'} minutes"
          + (f" (missing: {', '.join(plan['missing'])})" if plan["missing"] else ""), flush=True)
    print(f"gpu_check: every section's file and summary.json are in {args.out}", flush=True)
    return 1 if summary["failed_sections"] else 0


def _get(sections: dict, *keys):
    value = sections
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def targets(sections: dict, dry_run: bool) -> dict:
    """The GPU targets against what was measured (none in a dry run)."""
    measured = {
        "train_loop_img_s >= 10000": (_get(sections, "steady_loop", "images_per_second", "cudnn_benchmark_on"), 10_000),
        "epoch_task_fixed_s_warm_cache <= 10": (_get(sections, "pipeline", "tasks", "train_epoch_2", "fixed_s"), -10),
        "score_rate_img_s >= 12000": (_get(sections, "scoring", "rate_img_s"), 12_000),
        "score_200k_files_end_to_end_img_s >= 8000": (_get(sections, "scoring", "end_to_end_200k_img_s"), 8_000),
    }
    result: dict = {}
    for name, (value, target) in measured.items():
        if dry_run or value is None:
            result[name] = "unmeasured" + (" (dry run)" if dry_run else "")
        else:
            result[name] = {"value": value, "met": value >= target if target > 0 else value <= -target}
    return result


def projection(sections: dict) -> dict:
    """A 12-epoch full-CelebA run through the DAG, stage by stage, from the measured parts:
    the epoch task's fixed cost (pipeline's warm epoch 2, with its small upload and label parse
    replaced by the full-size ones), the steady training rate, and the scoring rate for the
    validation and test passes. Each stage says what it is made of; a missing part leaves it out."""
    def get(*keys):
        return _get(sections, *keys)

    tasks = ("pipeline", "tasks")
    train_rate = get("steady_loop", "images_per_second", "cudnn_benchmark_on")
    score_rate = get("scoring", "rate_img_s")
    small_fixed = get(*tasks, "train_epoch_2", "fixed_s")
    small_upload = get(*tasks, "train_epoch_2", "metrics", "upload_s") or 0.0
    full_upload, full_parse = get("fixed_cost", "upload_s"), get("fixed_cost", "labels_parse_s")
    stages: dict[str, Any] = {}
    if None not in (small_fixed, full_upload, full_parse, train_rate):
        fixed = small_fixed - small_upload + full_upload + full_parse
        stages["train_epoch"] = {"seconds": round(fixed + CELEBA_TRAIN / train_rate, 1), "fixed_s": round(fixed, 1),
                                 "images": CELEBA_TRAIN, "images_per_second": train_rate, "times": 12}
    evaluate_fixed = get(*tasks, "validate_epoch_2", "wall_s")
    if None not in (evaluate_fixed, score_rate, full_parse):
        for name, images, times in (("validate_epoch", CELEBA_VAL, 12), ("test", CELEBA_TEST, 1)):
            fixed = evaluate_fixed + full_parse
            stages[name] = {"seconds": round(fixed + images / score_rate, 1), "fixed_s": round(fixed, 1),
                            "images": images, "images_per_second": score_rate, "times": times}
    if get(*tasks, "select", "wall_s") is not None:
        stages["select"] = {"seconds": get(*tasks, "select", "wall_s"), "times": 1}
    cache_wall, images = get(*tasks, "cache", "wall_s"), get("pipeline", "images")
    if cache_wall is not None and images:
        total_images = CELEBA_TRAIN + CELEBA_VAL + CELEBA_TEST
        stages["cache"] = {"seconds": round(cache_wall / images * total_images, 1), "times": 1,
                           "note": "the small set's wall time per image, scaled linearly"}
    expected = {"train_epoch", "validate_epoch", "test", "select", "cache"}
    total = sum(stage["seconds"] * stage["times"] for stage in stages.values())
    return {"stages": stages, "missing": sorted(expected - set(stages)),
            "total_minutes": round(total / 60, 1) if set(stages) == expected else None}


if __name__ == "__main__":
    sys.exit(main())
