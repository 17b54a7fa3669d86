"""The publish gate's measurement: a model file's mean accuracy on chosen images of a run.

faceattr.store.gate decides which images (a challenger's test images the champion never trained
or validated on) and calls `mean_accuracy_on` for both models; the store never imports the engine,
so the callers (`faceattr models publish` and the DAG's publish task) hand this function to
faceattr.store.registry.publish. Both models are scored the same way: the evaluation transform,
each model file's own thresholds, the labels of the run's data version.
"""
from __future__ import annotations

import logging
from pathlib import Path

from faceattr.data.loaders import load_split_frame, make_loader
from faceattr.engine.evaluate import get_accuracy, score_loader
from faceattr.model import load_model_file
from faceattr.run.config import RunConfig
from faceattr.runtime import resolve_device

log = logging.getLogger(__name__)


def mean_accuracy_on(model_path: str | Path, run_dir: str | Path, image_ids: list[str],
                     device: str | None = None) -> float:
    """Mean accuracy over the 40 attributes of the model in `model_path` on `image_ids` of `run_dir`
    (labels and images of that run's data version). The model file's digest is checked on load."""
    config = RunConfig.load(run_dir)
    model, info = load_model_file(model_path)
    frame = load_split_frame(run_dir, root=config.root)
    missing = [image_id for image_id in image_ids if image_id not in frame.index]
    if missing:
        raise ValueError(f"{run_dir}: {len(missing)} image(s) to compare on are not in its split (first: {missing[0]})")
    rows = frame.loc[list(image_ids)].copy()
    rows["split"] = "test"
    # The PIL path: the decoded cache holds whole splits, not this subset.
    config = config.replace(data_path="pil", num_workers=0)
    target = resolve_device(device if device is not None else config.device)
    loader = make_loader(run_dir, config, "test", train=False, device=target, frame=rows)
    scores, labels = score_loader(model, loader, target)
    accuracy = get_accuracy(scores, labels, info["thresholds"].numpy())[1]
    log.info("%s on %d images of %s: mean accuracy %.4f", model_path, len(rows), Path(run_dir).name, accuracy)
    return accuracy
