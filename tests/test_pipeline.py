"""faceattr.pipeline.fit: `faceattr fit` end to end on a fresh synthetic dataset (the
acceptance check, slow), and the epoch loop's early stopping and resuming with stand-in stages."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch

from faceattr.cli import main
from faceattr.run.config import ConfigError

# Small enough for ~1-2 minutes on two idle cores, large enough that a from-scratch resnet18
# learns the plainly drawn attributes (hair colour, hats, glasses, sex...) within two epochs.
# The from-scratch recipe of benchmarks/learning.py: every layer trains (with --weights none no
# child is frozen unless asked), batch 16, the write-up's lr 1e-3, and BatchNorm statistics
# recomputed on the (320) unaugmented train images after each epoch.
IMAGES = 400
FIT_FLAGS = [
    "--epochs", "2", "--arch", "resnet18", "--weights", "none", "--device", "cpu",
    "--batch-size", "16", "--lr", "0.001", "--recalibrate-bn", "400", "--num-workers", "0",
]


def _run_cli(capsys: pytest.CaptureFixture, *argv: str) -> dict:
    code = main(list(argv))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def _cli(*argv: str) -> dict:
    """Run `faceattr ARGV` in-process and parse the JSON it prints (module fixtures have no capsys)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(argv))
    assert code == 0, f"faceattr {' '.join(argv)} exited with {code}"
    return json.loads(out.getvalue())


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    base = tmp_path_factory.mktemp("fit")
    _cli("synth", "--out", str(base / "source"), "--n", str(IMAGES), "--seed", "11")
    _cli("download", "--source", str(base / "source"), "--root", str(base / "root"))
    run = base / "run"
    summary = _cli("fit", "--root", str(base / "root"), "--run", str(run), *FIT_FLAGS)
    return run, summary


@pytest.mark.slow
def test_fit_writes_every_artifact(fitted):
    run, summary = fitted
    assert sorted(p.name for p in (run / "checkpoints").glob("epoch_*.pt")) == ["epoch_1.pt", "epoch_2.pt"]
    for name in ("config.json", "split.csv", "best.json", "model.pt"):
        assert (run / name).is_file(), name
    best = json.loads((run / "best.json").read_text())
    assert best["epoch"] == summary["best_epoch"] in (1, 2)
    assert set(best["val_by_epoch"]) == {"1", "2"}
    for epoch in (1, 2):
        assert (run / "metrics" / f"train_epoch_{epoch}.json").is_file()
        assert (run / "metrics" / f"val_epoch_{epoch}.json").is_file()
    report = Path(summary["paths"]["report"])
    assert report.is_dir() and (report / "index.html").is_file()
    assert any(report.glob("*.png")) and any(report.glob("*.csv"))


@pytest.mark.slow
def test_fit_beats_the_majority_baseline_on_test(fitted):
    run, summary = fitted
    metrics = json.loads(Path(summary["paths"]["test_metrics"]).read_text())
    assert metrics["split"] == "test" and metrics["epoch"] == summary["best_epoch"]
    assert metrics["images"] == summary["test_images"] > 0
    assert metrics["mean_accuracy"] == pytest.approx(summary["test_mean_accuracy"])
    assert metrics["majority_baseline"] == pytest.approx(summary["test_majority_baseline"])
    margin = metrics["mean_accuracy"] - metrics["majority_baseline"]
    assert margin > 0.01, (
        f"test mean accuracy {metrics['mean_accuracy']:.4f} is not above the majority baseline "
        f"{metrics['majority_baseline']:.4f}: the model did not learn"
    )


@pytest.mark.slow
def test_fit_again_resumes_without_retraining(fitted, capsys):
    run, summary = fitted
    checkpoints = {p: p.stat().st_mtime_ns for p in (run / "checkpoints").glob("epoch_*.pt")}
    again = _run_cli(capsys, "fit", "--run", str(run), *FIT_FLAGS)
    assert {p: p.stat().st_mtime_ns for p in checkpoints} == checkpoints
    assert again["best_epoch"] == summary["best_epoch"]
    assert again["test_mean_accuracy"] == pytest.approx(summary["test_mean_accuracy"])


# -- the epoch loop alone, with the stages replaced by stand-ins (fast) ---------------------------
def test_fit_stops_early_and_resumes_without_redoing_epochs(tmp_path, monkeypatch):
    import faceattr.engine.selection
    import faceattr.pipeline
    from faceattr.run.config import RunConfig
    from faceattr.fsutil import write_json
    from faceattr.run.layout import RunLayout
    from faceattr.pipeline import fit

    val_accuracy = {1: 0.50, 2: 0.60, 3: 0.55, 4: 0.54, 5: 0.70}
    layout = RunLayout(tmp_path / "run")
    calls: list[tuple] = []

    def make_split(root, strategy, seed, run_dir):
        calls.append(("split",))
        layout.split.write_text("image_id,split\n")
        return {"train": 8, "val": 1, "test": 1, "strategy": strategy, "path": str(layout.split)}

    def train_epoch(run_dir, epoch, config):
        calls.append(("train", epoch))
        layout.checkpoint(epoch).parent.mkdir(parents=True, exist_ok=True)
        layout.checkpoint(epoch).write_bytes(b"")

    def evaluate_epoch(run_dir, epoch, split, device=None):
        calls.append(("evaluate", epoch, split))
        result = {"epoch": 2, "split": split, "images": 1, "mean_accuracy": 0.58, "majority_baseline": 0.5}
        if split == "val":
            result.update(epoch=epoch, mean_accuracy=val_accuracy[epoch])
        write_json(layout.metrics(split, result["epoch"]), result)
        return result

    def select_best(run_dir):
        calls.append(("select",))
        return {"epoch": 2, "val_mean_accuracy": 0.60}

    monkeypatch.setattr(faceattr.pipeline, "make_split", make_split)
    monkeypatch.setattr(faceattr.pipeline, "launch_epoch", train_epoch)
    monkeypatch.setattr(faceattr.pipeline, "evaluate_epoch", evaluate_epoch)
    monkeypatch.setattr(faceattr.engine.selection, "select_best", select_best)
    monkeypatch.setattr(faceattr.pipeline, "write_report", lambda run_dir: layout.report)

    config = RunConfig(root=str(tmp_path / "root"), epochs=5, patience=2)
    summary = fit(config, layout.root)
    # Best at epoch 2; epochs 3 and 4 bring no gain; patience 2 stops before epoch 5.
    assert [c[1] for c in calls if c[0] == "train"] == [1, 2, 3, 4]
    assert summary["stopped_early"] and summary["epochs_run"] == [1, 2, 3, 4]
    assert summary["best_epoch"] == 2 and summary["test_mean_accuracy"] == 0.58
    assert summary["test_majority_baseline"] == 0.5
    assert calls[-2:] == [("select",), ("evaluate", "best", "test")]

    # Again: the split and the trained, validated epochs are kept.
    calls.clear()
    again = fit(config, layout.root)
    assert calls == [("select",), ("evaluate", "best", "test")]
    assert again["epochs_run"] == [1, 2, 3, 4]

    # A different learning setting for the same run folder is refused.
    with pytest.raises(ConfigError, match="lr"):
        fit(config.replace(lr=0.5), layout.root)


def test_with_tuned_thresholds_early_stopping_and_selection_rank_epochs_alike(tmp_path, monkeypatch):
    """Raw and tuned validation accuracy disagree here: raw accuracy improves every epoch, tuned
    accuracy peaks at epoch 1. fit ranks by the tuned figure for both decisions, so with patience 1
    it stops after epoch 2 and the real select_best picks epoch 1 (ranking early stopping by raw
    accuracy, as fit once did, trained all 4 epochs and then selected epoch 3)."""
    import numpy as np

    import faceattr.pipeline
    from faceattr.checkpoint import save_checkpoint
    from faceattr.run.config import RunConfig
    from faceattr.fsutil import write_json
    from faceattr.pipeline import fit
    from faceattr.run.layout import RunLayout

    raw = {1: 0.60, 2: 0.65, 3: 0.66, 4: 0.67}
    tuned = {1: 0.70, 2: 0.69, 3: 0.72, 4: 0.71}
    layout = RunLayout(tmp_path / "run")
    trained: list[int] = []

    def make_split(root, strategy, seed, run_dir):
        layout.split.write_text("image_id,split\n")
        return {"train": 8, "val": 1, "test": 1}

    def train_epoch(run_dir, epoch, config):
        trained.append(epoch)
        save_checkpoint({"model": {"w": torch.full((1,), float(epoch))}, "epoch": epoch}, layout.checkpoint(epoch))

    def evaluate_epoch(run_dir, epoch, split, device=None):
        if split == "test":
            result = {"epoch": 1, "split": "test", "images": 1, "mean_accuracy": 0.6, "majority_baseline": 0.5}
        else:
            rng = np.random.default_rng(epoch)
            layout.metrics_dir.mkdir(parents=True, exist_ok=True)
            np.savez(layout.scores("val", epoch), scores=rng.normal(size=(20, 40)).astype(np.float32),
                     labels=np.where(rng.random((20, 40)) < 0.3, 1, -1).astype(np.int8))
            result = {"epoch": epoch, "split": "val", "images": 20, "mean_accuracy": raw[epoch],
                      "mean_accuracy_tuned": tuned[epoch], "majority_baseline": 0.5}
        write_json(layout.metrics(split, result["epoch"]), result)
        return result

    monkeypatch.setattr(faceattr.pipeline, "make_split", make_split)
    monkeypatch.setattr(faceattr.pipeline, "launch_epoch", train_epoch)
    monkeypatch.setattr(faceattr.pipeline, "evaluate_epoch", evaluate_epoch)
    monkeypatch.setattr(faceattr.pipeline, "write_report", lambda run_dir: layout.report)

    config = RunConfig(root=str(tmp_path / "root"), epochs=4, patience=1, tune_thresholds=True)
    summary = fit(config, layout.root)
    assert trained == [1, 2] and summary["stopped_early"]
    assert summary["best_epoch"] == 1 == json.loads(layout.best.read_text())["epoch"]
    # Early stopping waited exactly `patience` epochs after the epoch that selection chose.
    assert max(summary["epochs_run"]) - summary["best_epoch"] == config.patience
    assert torch.load(layout.model, weights_only=True)["state_dict"]["w"].item() == 1.0
