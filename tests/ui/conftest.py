"""Fixtures of the UI tests: a finished run folder recorded in a store, and the plugin's app around it."""
from __future__ import annotations

import os

import numpy as np
import pytest

from faceattr.attributes import ATTRIBUTES
from faceattr.engine.metrics import majority_classes, summarise
from faceattr.run import metrics
from faceattr.run.config import RunConfig
from faceattr.run.layout import RunLayout
from support import published_model_file as model_file

VAL = {1: 0.80, 2: 0.86, 3: 0.86}  # epoch 3 ties epoch 2: the earlier wins


def _evaluation(rng, n: int, skill: float) -> tuple[np.ndarray, np.ndarray]:
    labels = np.where(rng.random((n, len(ATTRIBUTES))) < 0.3, 1, -1).astype(np.int8)
    scores = np.where(rng.random(labels.shape) < skill, labels, -labels) + rng.normal(0, 0.3, labels.shape)
    return scores.astype(np.float32), labels


@pytest.fixture
def made_run(tmp_path, monkeypatch):
    """A finished 3-epoch run folder recorded in a SQLite store, as the DAG leaves them."""
    from faceattr.store import registry
    from faceattr.store.store import Store

    monkeypatch.setenv("FACEATTR_DATA_ROOTS", str(tmp_path / "data"))
    monkeypatch.setenv("FACEATTR_DB_URL", f"sqlite:///{tmp_path / 'store.db'}")
    run_dir = tmp_path / "data" / "runs" / "manual__ui"
    RunConfig(arch="resnet18", weights="none", epochs=3, root=str(tmp_path / "data")).save(run_dir)
    rng = np.random.default_rng(0)
    majority = majority_classes(np.where(rng.random((50, len(ATTRIBUTES))) < 0.3, 1, -1))
    for epoch in (1, 2, 3):
        metrics.write_epoch_metrics(run_dir, "train", epoch, {
            "loss": 1.0 / epoch, "accuracy": 0.7 + 0.05 * epoch, "images": 48, "seconds": 10.0 + epoch,
            "images_per_second": 48 / (10.0 + epoch)})
        summary = summarise(*_evaluation(rng, 30, 0.8), 0.0, majority)
        metrics.write_epoch_metrics(run_dir, "val", epoch, {**summary, "mean_accuracy": VAL[epoch], "seconds": 2.0})
    metrics.write_best(run_dir, {"epoch": 2, "val_mean_accuracy": VAL[2], "val_by_epoch": {str(k): v for k, v in VAL.items()}})
    model_file(run_dir)  # before the test metrics, which record its sha256
    scores, labels = _evaluation(rng, 200, 0.85)
    metrics.write_epoch_metrics(run_dir, "test", 2, summarise(scores, labels, 0.0, majority))
    np.savez(RunLayout(run_dir).scores("test", 2), scores=scores, labels=labels, thresholds=np.zeros(len(ATTRIBUTES)))
    layout = RunLayout(run_dir)
    layout.report.mkdir()
    (layout.report / "index.html").write_text("<html>report</html>")
    layout.private_predictions.write_text("image_id\n")
    (run_dir / "private_predictions.errors.csv").write_text("image_id,reason\n")
    with Store.from_env() as store:
        store.sync_run_dir("manual__ui", run_dir, status="success", dag_run_id="manual__ui")
        registry.publish(store, run_dir, actor="test")  # the first published model: the champion
        yield {"store": store, "run_dir": run_dir, "scores": scores, "labels": labels, "outside": tmp_path / "secret"}


@pytest.fixture
def client(made_run):
    """The plugin's app without Airflow around it: auth and the metadata DB session stubbed out."""
    from fastapi.testclient import TestClient

    from airflow.api_fastapi.common.db.common import _get_session
    from faceattr.ui import app

    app._stores.clear()
    app._stores[os.environ["FACEATTR_DB_URL"]] = made_run["store"]  # default_url() is FACEATTR_DB_URL
    overrides = {dep.dependency: lambda: None for dep in app.app.router.dependencies}
    app.app.dependency_overrides.update({**overrides, _get_session: lambda: None})
    try:
        yield TestClient(app.app)
    finally:
        app.app.dependency_overrides.clear()
        app._stores.clear()


