"""faceattr.run.report: plots, tables and a self-contained HTML page from a run's metrics files."""
from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from faceattr.run.config import RunConfig
from faceattr.engine.metrics import majority_classes, summarise
from faceattr.fsutil import read_json, write_json
from faceattr.attributes import ATTRIBUTES
from faceattr.run.layout import RunLayout
from faceattr.run.report import write_report

EXPECTED_FILES = ["accuracy_per_epoch.png", "epochs.csv", "index.html", "test_attributes.csv", "test_attributes.png"]


def _split_metrics(epoch: int, split: str, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    labels = np.where(rng.random((50, 40)) < np.linspace(0.05, 0.8, 40), 1, -1)
    scores = labels * rng.uniform(0, 1, 40) + rng.normal(0, 0.8, (50, 40))
    return {"epoch": epoch, "split": split, **summarise(scores, labels, 0.0, majority_classes(labels))}


def _make_run(run: Path, *, tested: bool = True) -> Path:
    layout = RunLayout(run)
    RunConfig(arch="resnet18", epochs=3).save(run)
    for epoch in (1, 2, 3):
        write_json(layout.metrics("train", epoch), {"epoch": epoch, "split": "train", "loss": 1.0 / epoch,
                                                    "accuracy": 0.8 + 0.05 * epoch, "images": 100,
                                                    "seconds": 1.0, "images_per_second": 100.0})
        write_json(layout.metrics("val", epoch), _split_metrics(epoch, "val", seed=epoch))
    val_by_epoch = {str(k): read_json(layout.metrics("val", k))["mean_accuracy"] for k in (1, 2, 3)}
    best_epoch = int(max(val_by_epoch, key=val_by_epoch.get))
    write_json(layout.best, {"epoch": best_epoch, "val_mean_accuracy": val_by_epoch[str(best_epoch)],
                             "val_by_epoch": val_by_epoch})
    if tested:
        write_json(layout.metrics("test", best_epoch), _split_metrics(best_epoch, "test", seed=99))
    return run


def test_report_has_plots_tables_and_a_self_contained_page(tmp_path):
    run = _make_run(tmp_path / "run")
    folder = write_report(run)
    assert folder == RunLayout(run).report
    assert sorted(p.name for p in folder.iterdir()) == EXPECTED_FILES

    for name in ("accuracy_per_epoch.png", "test_attributes.png"):
        with Image.open(folder / name) as image:
            assert image.format == "PNG" and image.width >= 600 and image.height >= 400

    best = read_json(RunLayout(run).best)
    test = read_json(RunLayout(run).metrics("test", best["epoch"]))
    table = pd.read_csv(folder / "test_attributes.csv", index_col="attribute")
    assert table.index.tolist() == list(ATTRIBUTES)
    assert list(table.columns) == ["accuracy", "balanced_accuracy", "f1", "majority_baseline", "threshold"]
    for name in ATTRIBUTES:
        for column in table.columns:
            assert table.loc[name, column] == pytest.approx(test["attributes"][name][column], abs=1e-6)

    epochs = pd.read_csv(folder / "epochs.csv")
    assert epochs["epoch"].tolist() == [1, 2, 3]
    assert epochs["train_mean_accuracy"].tolist() == pytest.approx([0.85, 0.9, 0.95])

    page = (folder / "index.html").read_text()
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert [base64.b64decode(data) for data in embedded] == [
        (folder / "accuracy_per_epoch.png").read_bytes(), (folder / "test_attributes.png").read_bytes()]
    assert "http" not in page.replace("http-equiv", "")  # nothing fetched from elsewhere
    assert f"test mean accuracy {test['mean_accuracy']:.4f}" in page
    assert f"best epoch {best['epoch']}" in page
    assert all(f"<td>{name}</td>" in page for name in ATTRIBUTES)


def test_report_is_replaced_whole(tmp_path):
    run = _make_run(tmp_path / "run")
    folder = write_report(run)
    (folder / "stale.txt").write_text("from an older report")
    write_json(RunLayout(run).metrics("train", 3), {"epoch": 3, "split": "train", "accuracy": 0.5})
    write_report(run)
    assert sorted(p.name for p in folder.iterdir()) == EXPECTED_FILES
    assert pd.read_csv(folder / "epochs.csv")["train_mean_accuracy"].tolist()[-1] == pytest.approx(0.5)
    # No temporary or old folders are left beside it.
    assert sorted(p.name for p in run.iterdir()) == ["best.json", "config.json", "metrics", "report"]


def test_report_before_testing_and_without_metrics(tmp_path):
    run = _make_run(tmp_path / "untested", tested=False)
    folder = write_report(run)
    assert sorted(p.name for p in folder.iterdir()) == ["accuracy_per_epoch.png", "epochs.csv", "index.html"]
    assert "not tested yet" in (folder / "index.html").read_text()

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no train or validation metrics"):
        write_report(empty)
    assert not (empty / "report").exists()

    broken = _make_run(tmp_path / "broken")
    RunLayout(broken).metrics("val", 2).write_text("{not json")
    with pytest.raises(ValueError, match="val_epoch_2.json: not valid JSON"):
        write_report(broken)

    # The report reads metrics through faceattr.run.metrics: a file under another epoch's name is refused.
    misnamed = _make_run(tmp_path / "misnamed")
    RunLayout(misnamed).metrics("val", 1).rename(RunLayout(misnamed).metrics("val", 7))
    with pytest.raises(ValueError, match="val_epoch_7.json: field 'epoch' is 1, but the file name says 7"):
        write_report(misnamed)
    figureless = _make_run(tmp_path / "figureless")
    RunLayout(figureless).metrics("train", 1).write_text('{"epoch": 1, "split": "train"}')
    with pytest.raises(ValueError, match="train_epoch_1.json: no mean_accuracy or accuracy figure"):
        write_report(figureless)


def test_report_command(tmp_path, capsys):
    from faceattr.cli import main

    run = _make_run(tmp_path / "run")
    assert main(["report", "--run", str(run)]) == 0
    assert str(RunLayout(run).report) in capsys.readouterr().out
