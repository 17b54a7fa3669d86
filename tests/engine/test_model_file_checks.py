"""A model.pt that is not the run's own (another run's, another arch's) is refused by evaluate
before it can overwrite the run's test metrics."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from faceattr.checkpoint import save_checkpoint
from faceattr.run.config import RunConfig
from faceattr.engine.evaluate import evaluate_epoch
from faceattr.engine.selection import select_best
from faceattr.model import build_model, check_run_model, export_model
from faceattr.run.layout import RunLayout

ARCH = "mobilenet_v3_small"  # the smallest torchvision classifier: scoring stays fast on a shared CPU


def test_check_run_model_names_what_differs(tmp_path):
    info = {"run": "/elsewhere/runs/run-a", "arch": "resnet18", "epoch": 2}
    check_run_model(info, "m.pt", tmp_path / "run-a", arch="resnet18", epoch=2)  # a pulled copy: same name
    with pytest.raises(ValueError, match=r"m.pt: not this run's selected model \(run 'run-a', expected 'run-b'; "
                                         r"arch 'resnet18', expected 'resnet50'; epoch 2, expected 3\)"):
        check_run_model(info, "m.pt", tmp_path / "run-b", arch="resnet50", epoch=3)


def test_evaluate_refuses_a_model_of_another_run_or_arch(synth_root, tmp_path):
    from faceattr.data.split import make_split

    run = tmp_path / "run"
    layout = RunLayout(run)
    config = RunConfig(root=str(synth_root), arch=ARCH, weights="none", freeze_children=0, batch_size=16,
                       num_workers=0, device="cpu", epochs=1)
    config.save(run)
    make_split(Path(synth_root), "random", 0, run)
    torch.manual_seed(0)
    model = build_model(ARCH, "none", 0)
    save_checkpoint({"model": model.state_dict(), "epoch": 1, "config": config.to_dict()}, layout.checkpoint(1))
    evaluate_epoch(run, 1, "val")
    select_best(run)
    evaluate_epoch(run, "best", "test")
    tested = layout.metrics("test", 1).read_bytes()

    export_model(layout.model, model.state_dict(), config, epoch=1, thresholds=np.zeros(40),
                 run=str(tmp_path / "other-run"), val_mean_accuracy=0.5)
    with pytest.raises(ValueError, match=r"model.pt: not this run's selected model \(run 'other-run', expected 'run'\)"):
        evaluate_epoch(run, "best", "test")
    other_arch = RunConfig(arch="resnet18", weights="none", freeze_children=0)
    export_model(layout.model, build_model("resnet18", "none", 0).state_dict(), other_arch, epoch=1,
                 thresholds=np.zeros(40), run=str(run.resolve()), val_mean_accuracy=0.5)
    with pytest.raises(ValueError, match=f"arch 'resnet18', expected '{ARCH}'"):
        evaluate_epoch(run, "best", "test")
    assert layout.metrics("test", 1).read_bytes() == tested  # the run's test metrics are untouched
