"""Plain-text views of the run store for the command line: `faceattr runs` and `faceattr models`.

The store returns dicts; how they are laid out for a terminal is decided here, not in the store.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from faceattr.attributes import SPLITS
from faceattr.store import registry
from faceattr.store.store import Store


def format_runs(store: Store) -> str:
    """`faceattr runs`: one line per run, newest first."""
    runs = store.runs()
    if not runs:
        return f"no runs in the run store {store.url}"
    rows = [
        [r["id"], r["status"], r["epochs"], fmt(r["best_epoch"]), fmt(r["val_mean_accuracy"]),
         fmt(r["test_mean_accuracy"]), fmt(r["started_at"]), r["run_dir"]]
        for r in runs
    ]
    return table(["run", "status", "epochs", "best epoch", "val acc", "test acc", "started", "run dir"], rows)

def format_run(store: Store, run_id: str) -> str:
    """`faceattr runs show ID`: the run, its models, per-epoch and per-attribute figures."""
    run = store.run(run_id)
    champion = store.current_model()
    lines = [
        f"run {run['id']}  status {run['status']}  dag run {fmt(run['dag_run_id'])}",
        f"folder {run['run_dir']}",
        f"started {fmt(run['started_at'])}  finished {fmt(run['finished_at'])}",
        f"best epoch {fmt(run['best_epoch'])}  val acc {fmt(run['val_mean_accuracy'])}  "
        f"test acc {fmt(run['test_mean_accuracy'])}",
    ]
    for model in run["models"]:
        state = f" ({model['state']}: {model['reason']})" if model["state"] else " (not published)"
        lines.append(f"model epoch {model['epoch']}: {model['path']}{state}")
    if champion and champion["run_id"] != run["id"]:
        lines.append(f"champion: run {champion['run_id']} epoch {champion['epoch']}")

    lines += ["", "per epoch"]
    if run["epochs"]:
        lines.append(table(
            ["epoch", "train loss", "train acc", "val acc", "val baseline", "test acc", "seconds", "img/s"],
            [[e["epoch"], fmt(e["train_loss"]), fmt(e["train_accuracy"]), fmt(e["val_mean_accuracy"]),
              fmt(e["val_majority_baseline"]), fmt(e["test_mean_accuracy"]), fmt(e["seconds"], 1),
              fmt(e["images_per_second"], 1)] for e in run["epochs"]],
        ))
    else:
        lines.append("no epochs recorded")

    # Per-attribute figures of the best epoch (else the latest epoch that has any).
    metrics = run["attribute_metrics"]
    epoch = run["best_epoch"]
    if not any(m["epoch"] == epoch for m in metrics) and metrics:
        epoch = max(m["epoch"] for m in metrics)
    chosen = [m for m in metrics if m["epoch"] == epoch]
    lines += ["", f"per attribute, epoch {fmt(epoch)}"]
    if not chosen:
        lines.append("no attribute metrics recorded")
        return "\n".join(lines)
    splits = [s for s in SPLITS if any(m["split"] == s for m in chosen)]
    by_key = {(m["attribute"], m["split"]): m for m in chosen}
    attributes = list(dict.fromkeys(m["attribute"] for m in chosen))
    headers = ["attribute"]
    for split in splits:
        headers += [f"{split} acc", f"{split} bal acc", f"{split} F1", f"{split} baseline"]
    rows = []
    for name in attributes:
        row: list[Any] = [name]
        for split in splits:
            m = by_key.get((name, split), {})
            row += [fmt(m.get(k)) for k in ("accuracy", "balanced_accuracy", "f1", "majority_baseline")]
        rows.append(row)
    lines.append(table(headers, rows))
    return "\n".join(lines)


def format_models(store: Store, history_lines: int = 10) -> str:
    """`faceattr models`: every published model (champion first) with why it holds its state,
    then the latest changes of state."""
    models = registry.candidates(store)
    if not models:
        return f"no published models in the run store {store.url}"
    rows = [[m["state"], m["run_id"], m["epoch"], fmt(m["val_mean_accuracy"]), fmt(m["test_mean_accuracy"]),
             fmt(m["state_at"]), m["actor"] or "-", m["reason"] or "-"] for m in models]
    lines = [table(["state", "run", "epoch", "val acc", "test acc", "since", "by", "why"], rows)]
    events = registry.history(store, history_lines)
    if events:
        lines += ["", "latest changes"]
        lines += [f"{fmt(e['at'])}  run {e['run_id']} epoch {e['epoch']} -> {e['state']}  by {e['actor']}: "
                  f"{e['reason']}" for e in events]
    return "\n".join(lines)


# -- cells and tables ------------------------------------------------------------------------
def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M UTC")
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain-text table: first column left-aligned, the rest right-aligned."""
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(
            (c.ljust(w) if i == 0 else c.rjust(w)) for i, (c, w) in enumerate(zip(row, widths))
        ).rstrip()

    return "\n".join([line(cells[0]), line(["-" * w for w in widths])] + [line(r) for r in cells[1:]])
