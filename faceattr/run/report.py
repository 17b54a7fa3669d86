"""RUN/report/: the write-up's figures and table for one run, plus a self-contained HTML page.

- accuracy_per_epoch.png: train vs validation mean accuracy per epoch, best epoch marked
- test_attributes.png:    test accuracy per attribute with the majority-class baseline marked
- test_attributes.csv:    the per-attribute test table (accuracy, balanced accuracy, F1, baseline)
- epochs.csv:             train and validation mean accuracy per epoch
- index.html:             all of the above in one file (images embedded as base64)

The folder is built under a temporary name and renamed into place, so a reader sees either the
previous report or the new one, never a mix.
"""
from __future__ import annotations

import base64
import html
import io
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
# matplotlib's object API with the Agg canvas: no pyplot global state, no display needed.
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from faceattr.fsutil import read_json
from faceattr.attributes import ATTRIBUTES
from faceattr.run.layout import RunLayout
from faceattr.run.metrics import all_epoch_metrics, read_best

EPOCH_PLOT = "accuracy_per_epoch.png"
ATTRIBUTE_PLOT = "test_attributes.png"
ATTRIBUTE_TABLE = "test_attributes.csv"
EPOCH_TABLE = "epochs.csv"
PAGE = "index.html"


def write_report(run_dir: str | Path) -> Path:
    """Write RUN/report/ from the run's metrics files; returns the report folder."""
    layout = RunLayout(run_dir)
    found = all_epoch_metrics(layout.root)
    epochs = _epoch_rows(layout, found)
    if not epochs:
        raise FileNotFoundError(
            f"{layout.metrics_dir}: no train or validation metrics to report; train and evaluate first"
        )
    best = read_best(layout.root)
    test = None if best is None else found["test"].get(best["epoch"])
    if test is not None:
        missing = [name for name in ATTRIBUTES if name not in test.get("attributes", {})]
        if missing:
            raise ValueError(f"{layout.metrics('test', best['epoch'])}: no metrics for {', '.join(missing[:5])}")
    config = read_json(layout.config) if layout.config.is_file() else {}

    files: dict[str, bytes] = {
        EPOCH_PLOT: _epoch_plot(epochs, best),
        EPOCH_TABLE: _epoch_table(epochs).encode(),
    }
    if test is not None:
        files[ATTRIBUTE_PLOT] = _attribute_plot(test)
        files[ATTRIBUTE_TABLE] = _attribute_table(test).encode()
    files[PAGE] = _page(layout, config, epochs, best, test, files).encode()
    return _replace_folder(layout.report, files)


# -- data -------------------------------------------------------------------------------------
def _epoch_rows(layout: RunLayout, found: dict[str, dict[int, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per epoch that has train or validation metrics: epoch, train, val, val baseline."""
    rows: dict[int, dict[str, Any]] = {}
    for split in ("train", "val"):
        for epoch, data in found[split].items():
            # Training writes "accuracy" (measured during the epoch); evaluate writes "mean_accuracy".
            value = data.get("mean_accuracy", data.get("accuracy"))
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{layout.metrics(split, epoch)}: no mean_accuracy or accuracy figure")
            row = rows.setdefault(epoch, {"epoch": epoch, "train": None, "val": None, "val_baseline": None})
            row[split] = float(value)
            if split == "val":
                row["val_baseline"] = data.get("majority_baseline")
    return [rows[k] for k in sorted(rows)]


def _epoch_table(epochs: list[dict[str, Any]]) -> str:
    lines = ["epoch,train_mean_accuracy,val_mean_accuracy"]
    for row in epochs:
        lines.append(f"{row['epoch']},{_csv_number(row['train'])},{_csv_number(row['val'])}")
    return "\n".join(lines) + "\n"


def _attribute_table(test: dict[str, Any]) -> str:
    table = pd.DataFrame.from_dict(test["attributes"], orient="index").loc[list(ATTRIBUTES)]
    table = table[["accuracy", "balanced_accuracy", "f1", "majority_baseline", "threshold"]]
    table.index.name = "attribute"
    return table.to_csv(float_format="%.6f")


def _csv_number(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


# -- figures ----------------------------------------------------------------------------------
def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _epoch_plot(epochs: list[dict[str, Any]], best: dict | None) -> bytes:
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for split, style in (("train", "o-"), ("val", "s-")):
        points = [(row["epoch"], row[split]) for row in epochs if row[split] is not None]
        if points:
            axes.plot(*zip(*points), style, label="train" if split == "train" else "validation")
    baselines = [row["val_baseline"] for row in epochs if row["val_baseline"] is not None]
    if baselines:
        axes.axhline(baselines[0], color="grey", linestyle=":", label="majority baseline (val)")
    if best is not None:
        axes.axvline(best["epoch"], color="black", linestyle="--", linewidth=1, label=f"best epoch ({best['epoch']})")
    axes.set_xlabel("epoch")
    axes.set_ylabel("mean accuracy over 40 attributes")
    axes.set_title("Train vs validation accuracy per epoch")
    axes.xaxis.get_major_locator().set_params(integer=True)
    axes.grid(alpha=0.3)
    axes.legend()
    return _png(figure)


def _attribute_plot(test: dict[str, Any]) -> bytes:
    names = list(ATTRIBUTES)
    accuracy = [test["attributes"][n]["accuracy"] for n in names]
    baseline = [test["attributes"][n]["majority_baseline"] for n in names]
    positions = list(range(len(names)))

    figure = Figure(figsize=(8, 10), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.barh(positions, accuracy, color="tab:blue", label="test accuracy")
    axes.scatter(baseline, positions, marker="|", s=150, color="black", zorder=3, label="majority baseline")
    axes.set_yticks(positions, names, fontsize=8)
    axes.invert_yaxis()  # official order top to bottom
    axes.margins(y=0.01)
    axes.set_xlim(min(min(accuracy), min(baseline), 0.5) - 0.02, 1.005)
    axes.set_xlabel("accuracy")
    axes.set_title(f"Test accuracy per attribute (epoch {test['epoch']}, mean {test['mean_accuracy']:.4f})")
    axes.grid(axis="x", alpha=0.3)
    figure.legend(loc="outside lower center", ncols=2)  # below the axes: no bar hidden
    return _png(figure)


# -- HTML -------------------------------------------------------------------------------------
def _page(layout: RunLayout, config: dict, epochs: list[dict], best: dict | None, test: dict | None,
          files: dict[str, bytes]) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>faceattr report: {e(layout.root.name)}</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
        "th:first-child,td:first-child{text-align:left}img{max-width:100%}</style>",
        "</head><body>",
        f"<h1>faceattr run {e(layout.root.name)}</h1>",
    ]
    if config:
        shown = ", ".join(f"{key} {e(str(config[key]))}" for key in ("arch", "loss", "optimizer", "lr", "batch_size",
                                                                    "epochs", "split", "seed") if key in config)
        parts.append(f"<p>Configuration: {shown}.</p>")
    summary = []
    if best is not None:
        summary.append(f"best epoch {best['epoch']} (validation mean accuracy {best['val_mean_accuracy']:.4f})")
    if test is not None:
        summary.append(
            f"test mean accuracy {test['mean_accuracy']:.4f} on {test['images']} images "
            f"(majority baseline {test['majority_baseline']:.4f}, mean balanced accuracy "
            f"{test['mean_balanced_accuracy']:.4f}, mean F1 {test['mean_f1']:.4f})"
        )
    else:
        summary.append("not tested yet: run 'faceattr select' then 'faceattr evaluate --epoch best --split test'")
    parts.append(f"<p>{'; '.join(summary)}.</p>")

    parts.append("<h2>Accuracy per epoch</h2>")
    parts.append(_img(files[EPOCH_PLOT], "train and validation mean accuracy per epoch"))
    rows = "".join(
        f"<tr><td>{row['epoch']}</td><td>{_cell(row['train'])}</td><td>{_cell(row['val'])}</td></tr>" for row in epochs
    )
    parts.append(f"<table><tr><th>epoch</th><th>train</th><th>validation</th></tr>{rows}</table>")

    if test is not None:
        parts.append("<h2>Test accuracy per attribute</h2>")
        parts.append(_img(files[ATTRIBUTE_PLOT], "test accuracy per attribute with the majority baseline"))
        header = "<tr><th>attribute</th><th>accuracy</th><th>balanced accuracy</th><th>F1</th>" \
                 "<th>majority baseline</th><th>threshold</th></tr>"
        body = "".join(
            f"<tr><td>{e(name)}</td>" + "".join(
                f"<td>{_cell(test['attributes'][name][key])}</td>"
                for key in ("accuracy", "balanced_accuracy", "f1", "majority_baseline", "threshold")
            ) + "</tr>"
            for name in ATTRIBUTES
        )
        parts.append(f"<table>{header}{body}</table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<p><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></p>'


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


# -- atomic folder replacement ----------------------------------------------------------------
def _replace_folder(target: Path, files: dict[str, bytes]) -> Path:
    """Write `files` into a fresh temporary folder beside `target`, then swap it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fresh = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        for name, content in files.items():
            (fresh / name).write_bytes(content)
        os.chmod(fresh, 0o755)  # mkdtemp makes it owner-only
        if target.exists():
            # A folder cannot be replaced in one rename; move the old one aside first.
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / target.name)
            os.replace(fresh, target)
            shutil.rmtree(old)
        else:
            os.replace(fresh, target)
    finally:
        if fresh.exists():
            shutil.rmtree(fresh)
    return target
