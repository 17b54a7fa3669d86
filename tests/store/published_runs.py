"""Run folders as select and test leave them, as far as the registry reads them: config.json,
split.csv, best.json, test metrics (with their digest) and a model.pt (run, arch, epoch, its digest)
without a network, so the store tests stay fast."""
from __future__ import annotations

from pathlib import Path

import torch

from faceattr.attributes import ATTRIBUTES
from faceattr.checkpoint import save_checkpoint
from faceattr.data.layout import ATTR_FILE, celeba_dir
from faceattr.run import metrics
from faceattr.run.config import RunConfig
from faceattr.run.layout import RunLayout


def write_model_file(run_dir: Path, run: str | None = None, *, epoch: int = 2, arch: str | None = None,
                     fill: float = 0.0) -> Path:
    arch = arch or RunConfig.load(run_dir).arch
    return save_checkpoint({"state_dict": {"w": torch.full((1,), fill)}, "arch": arch, "epoch": epoch,
                            "run": run or Path(run_dir).name}, RunLayout(run_dir).model)


def retest(run_dir: Path, epoch: int = 2) -> Path:
    """Write the test metrics again, as `faceattr evaluate --epoch best --split test` does after a new select."""
    data = metrics.read_epoch_metrics(run_dir, "test", epoch)
    data.pop("model_sha256", None)
    return metrics.write_epoch_metrics(run_dir, "test", epoch, data)


def data_root(tmp_path: Path, name: str = "data", labels: str = "2\nlabels\n") -> Path:
    root = tmp_path / name
    path = celeba_dir(root) / ATTR_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(labels)
    return root


def tested_run(runs: Path, name: str, test: float, *, root: Path, seed: int = 0, split: str = "random",
                test_ids: tuple[str, ...] = ("3.jpg", "4.jpg"), train_ids: tuple[str, ...] = ("1.jpg", "2.jpg")) -> Path:
    """A run folder as select + test leave it: config, split.csv, best.json, the test metrics, model.pt."""
    run_dir = runs / name
    RunConfig(root=str(root), seed=seed, split=split, epochs=2).save(run_dir)
    rows = [f"{image_id},train" for image_id in train_ids] + [f"{image_id},test" for image_id in test_ids]
    RunLayout(run_dir).split.write_text("\n".join(["image_id,split", *rows]) + "\n")
    attributes = {n: {"accuracy": test, "balanced_accuracy": test, "f1": test} for n in ATTRIBUTES}
    for epoch in (1, 2):
        metrics.write_epoch_metrics(run_dir, "val", epoch, {"mean_accuracy": 0.8, "attributes": attributes})
    write_model_file(run_dir, name)
    metrics.write_best(run_dir, {"epoch": 2, "val_mean_accuracy": 0.8})
    metrics.write_epoch_metrics(run_dir, "test", 2, {"mean_accuracy": test, "attributes": attributes})
    return run_dir
