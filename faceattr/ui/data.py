"""What the faceattr pages show, read from the run store and the run folders; no HTML here.

The store holds every run's per-epoch figures (the train task records each epoch when it is
trained, the validate task when it is scored), so curves update while a run trains. The run
folder adds what only it has: the test split's raw scores (accuracy per subgroup), the ranking
figure selection used and the files offered for download. A run folder is read only if it lies
under FACEATTR_DATA_ROOTS, and a download only from inside it (symlinks and '..' resolved).
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from faceattr import settings
from faceattr.attributes import ATTRIBUTES
from faceattr.run.config import ConfigError, RunConfig
from faceattr.data.access import AccessError, check_path
from faceattr.run.layout import RUN_FOLDER_NAME, RunLayout
from faceattr.run.timing import duration, epoch_seconds, now, run_eta

# The files a run offers for download: link name -> path inside the run folder.
DOWNLOADS = {
    "model.pt": "model.pt",
    "config.json": "config.json",
    "report": "report/index.html",
    "private_predictions.csv": "private_predictions.csv",
    "private_predictions.errors.csv": "private_predictions.errors.csv",
}
log = logging.getLogger(__name__)

REPORT_FILE = re.compile(r"report/[A-Za-z0-9][A-Za-z0-9._-]{0,100}")  # the report page's own images and tables
PULL_EVERY = 30.0  # seconds between pulls of one run folder from the object store
_pulled: dict[Path, float] = {}  # run folder -> time.monotonic() of its last pull
# (attribute, name of its -1 group, name of its 1 group): groups CelebA classifiers are known to treat unequally.
SUBGROUPS = (("Male", "women", "men"), ("Young", "not young", "young"))


class NotFound(LookupError):
    """A run, or a file of a run, that is not there or may not be served; the message says which."""


def check_run_id(run_id: str) -> str:

    if not RUN_FOLDER_NAME.fullmatch(run_id or ""):
        raise ValueError(f"run id {run_id!r}: expected letters, digits, '.', '_' or '-' (a run folder's name)")
    return run_id


def run_folder(run: dict[str, Any]) -> Path | None:
    """The run's folder if this server may read it (under FACEATTR_DATA_ROOTS) and it is here; else None.

    With FACEATTR_ARTIFACTS the folders live in the object store: what the pages read (everything
    but the checkpoints and the image cache) is pulled into the run's path first, at most every
    PULL_EVERY seconds per run, since a running run's page asks every few seconds.
    """
    try:
        folder = check_path(run["run_dir"], "run folder")
    except AccessError:
        return None
    if settings.artifacts() and time.monotonic() - _pulled.get(folder, -PULL_EVERY) >= PULL_EVERY:
        from faceattr.run import artifacts

        try:
            artifacts.pull(folder, only=lambda relative: not relative.startswith(("checkpoints/", "cache/")))
        except (artifacts.ArtifactError, OSError) as exc:  # show what is here; say why the rest is not
            log.warning("run %s: could not pull its folder from %s: %s", run["id"], settings.artifacts(), exc)
        _pulled[folder] = time.monotonic()
    return folder if folder.is_dir() else None


def download_path(run: dict[str, Any], name: str) -> Path:
    """The file behind download `name` of `run`: a known name or a report file, inside the run folder."""
    relative = DOWNLOADS.get(name) or (name if REPORT_FILE.fullmatch(name) else None)
    if relative is None:
        raise NotFound(f"{name!r} is not a file runs offer ({', '.join(DOWNLOADS)} or report/<file>)")
    folder = run_folder(run)
    if folder is None:
        raise NotFound(f"run {run['id']}: its folder is not readable on this server")
    root = Path(os.path.realpath(folder))
    target = Path(os.path.realpath(root / relative))
    if not target.is_relative_to(root):  # a symlink inside the run folder pointing out of it
        raise NotFound(f"run {run['id']}: {relative} leads out of the run folder")
    if not target.is_file():
        raise NotFound(f"run {run['id']}: no {relative} (yet)")
    return target


def config_of(run: dict[str, Any]) -> RunConfig | None:
    try:
        return RunConfig.from_dict(run.get("config") or {}, source=f"run {run['id']} config")
    except ConfigError:
        return None


def _seconds(start: dt.datetime | None, end: dt.datetime | None) -> float | None:
    return None if start is None or end is None else (end - start).total_seconds()


def _mean(values: Iterable[float | None]) -> float | None:
    found = [v for v in values if v is not None]
    return sum(found) / len(found) if found else None


# -- the Runs page --------------------------------------------------------------------------------
def runs_table(store) -> list[dict[str, Any]]:
    """One row per run, newest first: what the Runs page lists and its JSON returns."""

    current = store.current_model()
    rows = []
    for summary in store.runs():
        run = store.run(summary["id"])
        config = run.get("config") or {}
        epochs = run["epochs"]
        best = next((e for e in epochs if e["epoch"] == run["best_epoch"]), {})
        rows.append({
            "id": run["id"], "dag_run_id": run["dag_run_id"], "status": run["status"],
            "started_at": run["started_at"], "finished_at": run["finished_at"],
            "seconds": _seconds(run["started_at"], run["finished_at"] or (now() if run["status"] == "running" else None)),
            "arch": config.get("arch"), "weights": config.get("weights"), "split": config.get("split"),
            "epochs_planned": config.get("epochs"),
            "epochs_done": sum(1 for e in epochs if e["val_mean_accuracy"] is not None),
            "best_epoch": run["best_epoch"], "val_mean_accuracy": run["val_mean_accuracy"],
            "test_mean_accuracy": run["test_mean_accuracy"],
            "majority_baseline": best.get("val_majority_baseline"),
            "test_majority_baseline": _mean(m["majority_baseline"] for m in run["attribute_metrics"]
                                            if m["split"] == "test" and m["epoch"] == run["best_epoch"]),
            "current": bool(current and current["run_id"] == run["id"]),
        })
    return rows


def curves(run: dict[str, Any]) -> dict[str, list[tuple[int, float]]]:
    """Per-epoch series of a run from the store: train loss and accuracy, validation, baseline, images/s."""
    def series(key: str) -> list[tuple[int, float]]:
        return [(e["epoch"], float(e[key])) for e in run["epochs"] if e.get(key) is not None]

    return {key: series(key) for key in ("train_loss", "train_accuracy", "val_mean_accuracy", "val_majority_baseline",
                                         "images_per_second", "seconds")}


# -- the Run page ---------------------------------------------------------------------------------
def progress(run: dict[str, Any], config: RunConfig | None, folder: Path | None,
             tasks: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Epochs validated of planned, what runs now and for how long, and the run's ETA.

    `tasks`: the DAG run's task instances ({task_id, state, start_date, end_date}) from Airflow.
    """

    planned = config.epochs if config else None
    done = sum(1 for e in run["epochs"] if e["val_mean_accuracy"] is not None)
    running = [t for t in tasks if t.get("state") == "running"]
    seconds = epoch_seconds(folder) if folder else {
        e["epoch"]: float(e["seconds"]) for e in run["epochs"] if e.get("seconds") is not None}
    eta = None
    if run["status"] == "running" and config is not None:
        eta = run_eta(config, seconds, done + 1)
        started = [t["start_date"] for t in running if t.get("start_date") and t["task_id"].startswith("epoch_")]
        if eta is not None and started:
            eta = max(0.0, eta - (now() - min(started)).total_seconds())
    return {
        "planned": planned, "validated": done,
        "fraction": (done / planned) if planned else None,
        "running": [{"task_id": t["task_id"],
                     "for": duration((now() - t["start_date"]).total_seconds()) if t.get("start_date") else ""}
                    for t in running],
        "eta_seconds": eta, "eta": None if eta is None else duration(eta),
        "mean_epoch": duration(sum(seconds.values()) / len(seconds)) if seconds else None,
    }


def selection(run: dict[str, Any], config: RunConfig | None, folder: Path | None) -> dict[str, Any]:
    """Every validated epoch's ranking figure, the rule (faceattr.run.selection's) and the winner."""
    from faceattr.run.selection import best_epoch, ranking_measure, rule_text, validation_scores

    measure = ranking_measure(config) if config else "mean_accuracy"
    validated = {e["epoch"]: float(e["val_mean_accuracy"]) for e in run["epochs"] if e["val_mean_accuracy"] is not None}
    ranked = dict(validated)
    if measure != "mean_accuracy" and folder is not None:
        ranked = validation_scores(folder, config, sorted(validated))
    rule = rule_text(config or RunConfig())  # an unreadable config: the default rule, by mean accuracy
    model = run["model"]  # the store's selected_model
    chosen = model["epoch"] if model else None
    return {
        "measure": measure, "rule": rule, "chosen": chosen is not None,
        "winner": chosen if chosen is not None else (best_epoch(ranked) if ranked else None),
        "rows": [{"epoch": epoch, "val_mean_accuracy": validated[epoch], "ranked_by": ranked.get(epoch),
                  "majority_baseline": next((e["val_majority_baseline"] for e in run["epochs"] if e["epoch"] == epoch),
                                            None)} for epoch in sorted(validated)],
    }


def attribute_table(run: dict[str, Any], current_run: dict[str, Any] | None,
                    current_epoch: int | None) -> list[dict[str, Any]]:
    """Per-attribute test accuracy of the run's model, its majority baseline and the current model's."""
    def test_rows(source: dict[str, Any] | None, epoch: int | None) -> dict[str, dict[str, Any]]:
        if source is None or epoch is None:
            return {}
        return {m["attribute"]: m for m in source["attribute_metrics"] if m["split"] == "test" and m["epoch"] == epoch}

    mine, theirs = test_rows(run, run["best_epoch"]), test_rows(current_run, current_epoch)
    return [{"attribute": name, "accuracy": mine[name]["accuracy"], "majority_baseline": mine[name]["majority_baseline"],
             "balanced_accuracy": mine[name]["balanced_accuracy"],
             "current": theirs[name]["accuracy"] if name in theirs else None}
            for name in ATTRIBUTES if name in mine]


def subgroup_accuracy(scores: np.ndarray, labels: np.ndarray, thresholds: np.ndarray | float = 0.0) -> list[dict]:
    """Mean test accuracy over the other 39 attributes within women/men and not young/young.

    The attribute that defines a group is left out of its mean: within women, "Male" accuracy
    would only measure false positives. `labels` are -1/1, as evaluation writes them.
    """
    correct = np.where(scores >= thresholds, 1, -1) == labels
    rows = []
    for attribute, negative, positive in SUBGROUPS:
        column = ATTRIBUTES.index(attribute)
        others = [k for k in range(len(ATTRIBUTES)) if k != column]
        for name, mask in ((negative, labels[:, column] == -1), (positive, labels[:, column] == 1)):
            rows.append({"group": name, "attribute": attribute, "images": int(mask.sum()),
                         "mean_accuracy": float(correct[mask][:, others].mean()) if mask.any() else None,
                         "all_images": float(correct[:, others].mean())})
    return rows


def subgroups(folder: Path | None, epoch: int | None) -> list[dict] | None:
    """subgroup_accuracy from RUN/metrics/test_epoch_K.npz (kept by evaluation); None without it."""
    if folder is None or epoch is None:
        return None
    path = RunLayout(folder).scores("test", epoch)
    if not path.is_file():
        return None
    with np.load(path) as saved:
        thresholds = saved["thresholds"] if "thresholds" in saved.files else 0.0
        return subgroup_accuracy(saved["scores"], saved["labels"], thresholds)


def scoring_jobs(store, run_id: str) -> list[dict[str, Any]]:
    """The scoring jobs that used this run's model, newest first."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from faceattr.store.schema import ScoringJob

    with Session(store.engine) as session:
        jobs = session.scalars(select(ScoringJob).where(ScoringJob.model_run_id == run_id)).all()
        rows = [{c.key: getattr(job, c.key) for c in ScoringJob.__table__.columns} for job in jobs]
    never = dt.datetime.min.replace(tzinfo=dt.timezone.utc)
    return sorted(rows, key=lambda j: j.get("started_at") or never, reverse=True)


def run_view(store, run_id: str, tasks: Iterable[dict[str, Any]] = ()) -> dict[str, Any]:
    """Everything the Run page shows about one run."""
    from faceattr.store.store import RunNotFoundError

    try:
        run = store.run(check_run_id(run_id))
    except RunNotFoundError as exc:
        raise NotFound(str(exc)) from None
    config, folder = config_of(run), run_folder(run)
    current = store.current_model()
    current_run = None
    if current and current["run_id"] != run["id"]:
        current_run = store.run(current["run_id"])
    model = run["model"]  # the store's selected_model
    difference = None
    if current_run is not None and model is not None:
        from faceattr.store.registry import set_difference

        difference = set_difference(model.get("eval_set"), next(
            (m.get("eval_set") for m in current_run["models"] if m["epoch"] == current["epoch"]), None))
    downloads = {}
    for name in DOWNLOADS:
        try:
            download_path(run, name)
            downloads[name] = True
        except NotFound:
            downloads[name] = False
    return {
        "run": run, "config": run.get("config") or {}, "folder": str(folder) if folder else None,
        "curves": curves(run), "progress": progress(run, config, folder, tasks),
        "selection": selection(run, config, folder),
        "attributes": attribute_table(run, current_run, current["epoch"] if current_run else None),
        "current": {"run_id": current["run_id"], "epoch": current["epoch"], "is_this_run": current_run is None,
                    "test_mean_accuracy": current.get("test_mean_accuracy"), "comparable": difference is None, "difference": difference} if current else None,
        "subgroups": subgroups(folder, run["best_epoch"] if model else None),
        "scoring_jobs": scoring_jobs(store, run["id"]),
        "downloads": downloads,
    }
