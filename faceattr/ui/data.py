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
from faceattr.data.access import AccessError, check_path
from faceattr.run import artifacts, metrics
from faceattr.run.config import ConfigError, RunConfig
from faceattr.run.layout import RUN_FOLDER_NAME, RunLayout
from faceattr.run.selection import ranking_measure, rule_text, validation_scores
from faceattr.run.timing import duration, epoch_seconds, now, run_eta
from faceattr.store import queries
from faceattr.store.registry import set_difference
from faceattr.store.store import RunNotFoundError

_IN_RUN = RunLayout("")  # the run folder's names, relative to it
# The files a run offers for download: link name -> path inside the run folder.
DOWNLOADS = {
    "model.pt": _IN_RUN.model.as_posix(),
    "config.json": _IN_RUN.config.as_posix(),
    "report": (_IN_RUN.report / "index.html").as_posix(),
    _IN_RUN.private_predictions.name: _IN_RUN.private_predictions.as_posix(),
    # faceattr.engine.predict writes the unreadable images beside the CSV, as <stem>.errors.csv.
    f"{_IN_RUN.private_predictions.stem}.errors.csv": f"{_IN_RUN.private_predictions.stem}.errors.csv",
}
log = logging.getLogger(__name__)

# The report page's own images and tables.
REPORT_FILE = re.compile(re.escape(_IN_RUN.report.name) + r"/[A-Za-z0-9][A-Za-z0-9._-]{0,100}")
NOT_PULLED = (f"{_IN_RUN.checkpoints.name}/", f"{_IN_RUN.cache.name}/")  # the pages never read these
PULL_EVERY = 30.0  # seconds between pulls of one run folder from the object store
_pulled: dict[Path, float] = {}  # run folder -> time.monotonic() of its last pull
# (attribute, name of its -1 group, name of its 1 group): groups CelebA classifiers are known to treat unequally.
SUBGROUPS = (("Male", "women", "men"), ("Young", "not young", "young"))
# Stages of faceattr_train after the last epoch, and what each is estimated to take: test scores a
# split as large as validation; the others read and write small files.
AFTER_EPOCHS = ("select_best", "test", "report", "publish_model", "score_private")
LIGHT_STAGE_SECONDS = 10.0


class NotFound(LookupError):
    """A run, or a file of a run, that is not there or may not be served; the message says which."""


def check_run_id(run_id: str) -> str:
    if not RUN_FOLDER_NAME.fullmatch(run_id or ""):
        raise ValueError(f"run id {run_id!r}: expected letters, digits, '.', '_' or '-' (a run folder's name)")
    return run_id


def run_name(run: dict[str, Any]) -> str:
    """A run as a person tells runs apart: how it was started, when, and the DAG run's note, e.g.
    "manual 12-07 05:53:10 · lower lr". A DAG run id without Airflow's "<type>__" form is shortened."""
    dag_run_id = run.get("dag_run_id") or run.get("id") or run.get("run_id") or ""
    kind = dag_run_id.split("__", 1)[0] if "__" in dag_run_id else ""
    started = run.get("started_at")
    parts = [kind, started.astimezone(dt.timezone.utc).strftime("%m-%d %H:%M:%S")] if kind and started else \
        [dag_run_id if len(dag_run_id) <= 32 else dag_run_id[:31] + "…"]
    note = (run.get("note") or "").strip()
    if note:
        parts.append("· " + (note if len(note) <= 40 else note[:39] + "…"))
    return " ".join(parts)


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
        try:
            artifacts.pull(folder, only=lambda relative: not relative.startswith(NOT_PULLED))
        except (artifacts.ArtifactError, OSError) as exc:  # show what is here; say why the rest is not
            log.warning("run %s: could not pull its folder from %s: %s", run["id"], settings.artifacts(), exc)
        _pulled[folder] = time.monotonic()
    return folder if folder.is_dir() else None


def download_path(run: dict[str, Any], name: str) -> Path:
    """The file behind download `name` of `run`: a known name or a report file, inside the run folder."""
    relative = DOWNLOADS.get(name) or (name if REPORT_FILE.fullmatch(name) else None)
    if relative is None:
        raise NotFound(f"{name!r} is not a file runs offer ({', '.join(DOWNLOADS)} or {_IN_RUN.report.name}/<file>)")
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
            "registry_state": (run["model"] or {}).get("state"),
        })
    return rows


def curves(run: dict[str, Any], folder: Path | None = None) -> dict[str, list[tuple[float, float]]]:
    """Per-epoch series of a run from the store (train loss and accuracy, validation, baseline,
    images/s) and, from its folder's metrics: validation loss, learning rate, and training loss
    within each epoch (x = epoch - 1 + fraction of its batches)."""
    def series(key: str) -> list[tuple[float, float]]:
        return [(e["epoch"], float(e[key])) for e in run["epochs"] if e.get(key) is not None]

    found = {key: series(key) for key in ("train_loss", "train_accuracy", "val_mean_accuracy",
                                          "val_majority_baseline", "images_per_second", "seconds")}
    found.update(val_loss=[], lr=[], batch_loss=[])
    if folder is None:
        return found
    written = metrics.all_epoch_metrics(folder)
    found["val_loss"] = [(epoch, float(figures["loss"])) for epoch, figures in written["val"].items()
                         if isinstance(figures.get("loss"), (int, float))]
    for epoch, figures in written["train"].items():
        if isinstance(figures.get("lr"), (int, float)):
            found["lr"].append((epoch, float(figures["lr"])))
        batches, points = figures.get("batches"), figures.get("batch_losses") or []
        for batch, loss in points if isinstance(batches, int) and batches > 0 else []:
            found["batch_loss"].append((epoch - 1 + batch / batches, float(loss)))
    return found


# -- the Run page ---------------------------------------------------------------------------------
EPOCH_TASK = re.compile(r"epoch_0*(\d+)\.(train|validate)")
FINISHED = ("success", "skipped", "failed", "upstream_failed", "removed")


def _stage_seconds(run: dict[str, Any], folder: Path | None) -> dict[str, float | None]:
    """Mean seconds of a training pass and of a validation pass so far (None before the first)."""
    if folder is not None:
        found = metrics.all_epoch_metrics(folder)
        train = [float(d["seconds"]) for d in found["train"].values() if d.get("seconds") is not None]
        val = [float(d["seconds"]) for d in found["val"].values() if d.get("seconds") is not None]
    else:
        train, val = [float(e["seconds"]) for e in run["epochs"] if e.get("seconds") is not None], []
    return {"train": sum(train) / len(train) if train else None, "validate": sum(val) / len(val) if val else None}


def progress(run: dict[str, Any], config: RunConfig | None, folder: Path | None,
             tasks: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Epochs validated of planned, the running epoch's progress, what runs now and for how long,
    and the run's ETA: the epochs left (training and validation) plus the stages after the last
    epoch (test takes about a validation pass; select, report, publish and scoring a few seconds).

    `tasks`: the DAG run's task instances ({task_id, state, start_date, end_date}) from Airflow.
    """
    tasks = list(tasks)
    planned = config.epochs if config else None
    done = sum(1 for e in run["epochs"] if e["val_mean_accuracy"] is not None)
    running = [t for t in tasks if t.get("state") == "running"]
    seconds = epoch_seconds(folder) if folder else {
        e["epoch"]: float(e["seconds"]) for e in run["epochs"] if e.get("seconds") is not None}
    stage = _stage_seconds(run, folder)
    states = {t["task_id"]: t.get("state") for t in tasks}

    def elapsed(task: dict[str, Any]) -> float:
        return (now() - task["start_date"]).total_seconds() if task.get("start_date") else 0.0

    current = None  # the epoch task running now and how far it is, by the mean pass so far
    for task in running:
        match = EPOCH_TASK.fullmatch(task["task_id"])
        if match:
            mean = stage[match.group(2)]
            current = {"epoch": int(match.group(1)), "stage": match.group(2), "elapsed": duration(elapsed(task)),
                       "fraction": None if not mean else min(0.99, elapsed(task) / mean)}
    eta = None
    if run["status"] == "running" and config is not None and seconds:
        stopped = any(state == "skipped" and (m := EPOCH_TASK.fullmatch(task_id)) and int(m.group(1)) > done
                      for task_id, state in states.items())  # early stopping, or fewer epochs than slots
        eta = 0.0 if stopped else (run_eta(config, seconds, done + 1) or 0.0)
        started = [elapsed(t) for t in running if EPOCH_TASK.fullmatch(t["task_id"])]
        eta = max(0.0, eta - max(started, default=0.0))
        for name in AFTER_EPOCHS:
            if states.get(name) in FINISHED:
                continue
            guess = (stage["validate"] or LIGHT_STAGE_SECONDS) if name == "test" else LIGHT_STAGE_SECONDS
            task = next((t for t in running if t["task_id"] == name), None)
            eta += max(0.0, guess - (elapsed(task) if task else 0.0))
    return {
        "planned": planned, "validated": done,
        "fraction": (done / planned) if planned else None,
        "current": current,
        "running": [{"task_id": t["task_id"], "for": duration(elapsed(t)) if t.get("start_date") else ""}
                    for t in running],
        "eta_seconds": eta, "eta": None if eta is None else duration(eta),
        "mean_epoch": duration(sum(seconds.values()) / len(seconds)) if seconds else None,
    }


def selection(run: dict[str, Any], config: RunConfig | None, folder: Path | None) -> dict[str, Any]:
    """Every validated epoch's ranking figure, the rule (faceattr.run.selection's) and the winner."""
    measure = ranking_measure(config) if config else "mean_accuracy"
    validated = {e["epoch"]: float(e["val_mean_accuracy"]) for e in run["epochs"] if e["val_mean_accuracy"] is not None}
    ranked = dict(validated)
    if measure != "mean_accuracy" and folder is not None:
        ranked = validation_scores(folder, config, sorted(validated))
    rule = rule_text(config or RunConfig())  # an unreadable config: the default rule, by mean accuracy
    # The store's answer: the selected model's epoch, else the best validated so far by the same rule.
    return {
        "measure": measure, "rule": rule, "chosen": run["model"] is not None, "winner": run["best_epoch"],
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


def run_view(store, run_id: str, tasks: Iterable[dict[str, Any]] = ()) -> dict[str, Any]:
    """Everything the Run page shows about one run."""
    try:
        run = store.run(check_run_id(run_id))
    except RunNotFoundError:
        raise NotFound(f"no run {run_id!r}") from None
    config, folder = config_of(run), run_folder(run)
    current = store.current_model()
    current_run = None
    if current and current["run_id"] != run["id"]:
        current_run = store.run(current["run_id"])
    model = run["model"]  # the store's selected_model
    difference = None
    if current_run is not None and model is not None:
        difference = set_difference(model.get("eval_set"), next(
            (m.get("eval_set") for m in current_run["models"] if m["epoch"] == current["epoch"]), None))
    downloads = {}  # link name -> its path under the run's files/ route, None when it is not there
    for name, relative in DOWNLOADS.items():
        try:
            download_path(run, name)
            downloads[name] = relative
        except NotFound:
            downloads[name] = None
    return {
        "run": run, "config": run.get("config") or {}, "folder": str(folder) if folder else None,
        "curves": curves(run, folder), "progress": progress(run, config, folder, tasks),
        "selection": selection(run, config, folder),
        "attributes": attribute_table(run, current_run, current["epoch"] if current_run else None),
        "current": {"run_id": current["run_id"], "epoch": current["epoch"], "is_this_run": current_run is None,
                    "test_mean_accuracy": current.get("test_mean_accuracy"), "comparable": difference is None, "difference": difference} if current else None,
        "subgroups": subgroups(folder, run["best_epoch"] if model else None),
        "scoring_jobs": queries.scoring_jobs(store, run["id"]),
        "registry": {"state": model.get("state"), "reason": model.get("reason"), "actor": model.get("actor"),
                     "at": model.get("state_at"), "epoch": model["epoch"]} if model else None,
        "events": queries.model_events(store, run["id"]),
        "downloads": downloads,
    }
