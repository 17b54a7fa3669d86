"""The run store on SQLite and on the machine's PostgreSQL: schema, upserts, sync from a run folder."""
from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from faceattr.run.config import RunConfig
from faceattr.attributes import ATTRIBUTES
from faceattr.run.layout import RunLayout
from faceattr.store import registry
from faceattr.store.schema import VERSION_TABLE
from faceattr.store.store import RunNotFoundError, Store, StoreError
from faceattr.views import format_run, format_runs
from faceattr.run import metrics
from published_runs import write_model_file

TABLES = {"runs", "epochs", "attribute_metrics", "models", "scoring_jobs", "model_events"}


def _figures(rng: random.Random) -> dict[str, float]:
    return {"accuracy": rng.uniform(0.5, 1), "balanced_accuracy": rng.uniform(0.5, 1), "f1": rng.uniform(0, 1)}


def _add_run(store: Store, run_id: str, tmp_path: Path, **fields) -> None:
    store.upsert_run(run_id, run_dir=tmp_path / run_id, config=RunConfig().to_dict(), status="running", **fields)


# -- schema -------------------------------------------------------------------------------------
def test_migrations_create_schema(store, store_url):
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from faceattr.store.schema import MIGRATIONS_DIR

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    heads = ScriptDirectory.from_config(config).get_heads()

    schema = inspect(store.engine)
    assert TABLES <= set(schema.get_table_names())
    assert {c["name"] for c in schema.get_columns("epochs")} >= {
        "run_id", "epoch", "train_loss", "train_accuracy", "val_mean_accuracy", "seconds", "images_per_second"}
    assert schema.get_pk_constraint("attribute_metrics")["constrained_columns"] == [
        "run_id", "epoch", "split", "attribute"]
    indexes = {i["name"]: i for i in schema.get_indexes("models")}
    assert indexes["models_one_current"]["unique"]

    # Reopening and upgrading again are no-ops: one version row, at head.
    with Store(store_url) as again:
        again.upgrade()
    with store.engine.connect() as conn:
        versions = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    assert versions == list(heads)


def test_downgrades_keep_the_scoring_jobs_model(store, tmp_path):
    from alembic import command

    _add_run(store, "r", tmp_path)
    store.upsert_model("r", 1, path=tmp_path / "r" / "model.pt", val_mean_accuracy=0.8, test_mean_accuracy=None)
    store.upsert_scoring_job("job", model_run_id="r", model_epoch=1, status="success")
    with store.write() as conn:
        command.downgrade(store._alembic_config(conn), "0001")
    assert {c["name"] for c in inspect(store.engine).get_columns("models")}.isdisjoint({"state", "sha256"})
    with store.engine.connect() as conn:
        job = conn.execute(text("SELECT model_run_id, model_epoch FROM scoring_jobs")).one()
    assert tuple(job) == ("r", 1)
    store.upgrade()


def test_default_url_is_a_sqlite_file_under_faceattr_home(tmp_path, monkeypatch):
    monkeypatch.delenv("FACEATTR_DB_URL", raising=False)
    monkeypatch.setenv("FACEATTR_HOME", str(tmp_path / "home"))
    with Store.from_env() as store:
        assert store.url.startswith("sqlite")
    assert (tmp_path / "home" / "faceattr.db").is_file()

    monkeypatch.delenv("FACEATTR_HOME")
    monkeypatch.chdir(tmp_path)
    with Store() as store:
        _add_run(store, "r", tmp_path)
    assert (tmp_path / "data" / "faceattr.db").is_file()

    monkeypatch.setenv("FACEATTR_DB_URL", f"sqlite:///{tmp_path / 'elsewhere.db'}")
    with Store.from_env() as store:
        assert store.runs() == []
    assert (tmp_path / "elsewhere.db").is_file()


@pytest.mark.parametrize("url, message", [
    ("not a url", "not a database URL"),
    ("mysql://localhost/faceattr", "mysql is not supported"),
])
def test_bad_urls_are_named(url, message):
    with pytest.raises(StoreError, match=message):
        Store(url)


def test_unreachable_database_is_a_clear_error(tmp_path):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(StoreError, match="a-file"):
        Store(f"sqlite:///{tmp_path / 'a-file' / 'store.db'}")
    pytest.importorskip("psycopg2")
    with pytest.raises(StoreError, match="run store postgresql.*127.0.0.1:1") as error:
        Store("postgresql+psycopg2://nobody:secret@127.0.0.1:1/faceattr")
    assert "secret" not in str(error.value)


# A task process: import first, then open the store when the gate file appears, all at once.
TASK = """
import sys, time
from pathlib import Path
from faceattr.store.store import Store
url, i, gate = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
(gate.parent / f"ready-{i}").touch()
while not gate.exists():
    time.sleep(0.01)
with Store(url) as store:
    store.upsert_run(f"run-{i}", run_dir=f"/runs/{i}", config={}, status="running")
"""


def test_fresh_database_opened_by_several_processes_at_once(store_url, tmp_path):
    # Airflow tasks start together on a fresh store: one migrates, the others wait and find it done.
    gate = tmp_path / "go"
    tasks = [
        subprocess.Popen([sys.executable, "-c", TASK, store_url, str(i), str(gate)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(3)
    ]
    try:
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob("ready-*"))) < len(tasks) and time.monotonic() < deadline:
            assert all(t.poll() is None for t in tasks), "a task process died before the gate"
            time.sleep(0.05)
        gate.touch()
        for task in tasks:
            _, stderr = task.communicate(timeout=120)
            assert task.returncode == 0, stderr
    finally:
        for task in tasks:
            if task.poll() is None:
                task.kill()
    with Store(store_url) as store:
        assert store.count("runs") == len(tasks)


def test_fresh_database_opened_by_several_threads_at_once(store_url):
    start = threading.Barrier(4)

    def task(i: int) -> None:
        start.wait(timeout=60)
        with Store(store_url) as store:
            store.upsert_run(f"run-{i}", run_dir=f"/runs/{i}", config={}, status="running")

    with ThreadPoolExecutor(max_workers=4) as pool:
        for done in [pool.submit(task, i) for i in range(4)]:
            done.result(timeout=120)
    with Store(store_url) as store:
        assert store.count("runs") == 4


# -- upserts ------------------------------------------------------------------------------------
def test_upserts_twice_leave_one_row(store, tmp_path):
    rng = random.Random(3)
    started = datetime(2024, 5, 1, 12, 30, tzinfo=timezone.utc)
    store.upsert_run("r1", run_dir=tmp_path / "r1", config={"lr": 0.001}, status="running",
                     dag_run_id="manual__1", started_at=started)
    store.upsert_run("r1", run_dir=tmp_path / "r1", config={"lr": 0.002}, status="success",
                     finished_at=(started + timedelta(hours=1)).isoformat())
    assert store.count("runs") == 1
    run = store.run("r1")
    assert run["status"] == "success" and run["config"] == {"lr": 0.002}
    assert run["started_at"] == started  # not given the second time: kept
    assert run["finished_at"] == started + timedelta(hours=1)
    assert run["dag_run_id"] == "manual__1"

    loss_1, loss_2 = rng.random(), rng.random()
    store.upsert_epoch("r1", 1, train_loss=loss_1, train_accuracy=0.6, seconds=12.5, images_per_second=80.0)
    store.upsert_epoch("r1", 1, train_loss=loss_2, val_mean_accuracy=0.7)
    assert store.count("epochs") == 1
    (epoch,) = store.run("r1")["epochs"]
    assert epoch["train_loss"] == pytest.approx(loss_2)
    assert epoch["train_accuracy"] == pytest.approx(0.6)  # not given the second time: kept
    assert epoch["val_mean_accuracy"] == pytest.approx(0.7)

    first = {name: _figures(rng) for name in ATTRIBUTES}
    second = {name: _figures(rng) for name in ATTRIBUTES}
    store.upsert_attribute_metrics("r1", 1, "val", first)
    store.upsert_attribute_metrics("r1", 1, "val", second)
    assert store.count("attribute_metrics") == len(ATTRIBUTES)
    stored = {m["attribute"]: m for m in store.run("r1")["attribute_metrics"]}
    for name in ATTRIBUTES:
        for key, value in second[name].items():
            assert stored[name][key] == pytest.approx(value)

    store.upsert_model("r1", 1, tmp_path / "r1" / "model.pt", val_mean_accuracy=0.7, test_mean_accuracy=None)
    store.upsert_model("r1", 1, tmp_path / "r1" / "model.pt", val_mean_accuracy=0.7, test_mean_accuracy=0.69)
    assert store.count("models") == 1
    assert store.run("r1")["models"][0]["test_mean_accuracy"] == pytest.approx(0.69)

    store.upsert_scoring_job("job-1", model_run_id="r1", model_epoch=1, input_path="/in.zip", status="running",
                             started_at=started)
    store.upsert_scoring_job("job-1", images=10, rows=9, errors=1, output_csv="/out.csv", status="success")
    assert store.count("scoring_jobs") == 1
    job = store.scoring_job("job-1")
    assert (job["status"], job["images"], job["rows"], job["errors"]) == ("success", 10, 9, 1)
    assert job["input_path"] == "/in.zip" and job["started_at"] == started


def test_recording_a_model_never_changes_its_registry_state(store, tmp_path):
    for run_id in ("a", "b"):
        _add_run(store, run_id, tmp_path)
        store.upsert_model(run_id, 2, tmp_path / f"{run_id}.pt", val_mean_accuracy=0.8, test_mean_accuracy=0.79)
    assert store.current_model() is None
    with store.engine.begin() as conn:  # what the registry decides (test_registry.py covers how)
        conn.execute(text("UPDATE models SET is_current = :yes, state = 'champion' "
                          "WHERE run_id = 'a'"), {"yes": True})
    # A retried recording updates the figures and keeps the decision.
    store.upsert_model("a", 2, tmp_path / "a.pt", val_mean_accuracy=0.81, test_mean_accuracy=0.8)
    current = store.current_model()
    assert (current["run_id"], current["state"]) == ("a", "champion")
    assert current["val_mean_accuracy"] == pytest.approx(0.81)

    # The database itself refuses a second champion.
    with pytest.raises(IntegrityError):
        with store.engine.begin() as conn:
            conn.execute(text("UPDATE models SET is_current = :yes WHERE run_id = 'b'"), {"yes": True})
    assert store.current_model()["run_id"] == "a"


def test_writes_need_a_known_run_and_good_values(store, tmp_path):
    with pytest.raises(RunNotFoundError, match="'ghost'"):
        store.upsert_epoch("ghost", 1, train_loss=0.1)
    with pytest.raises(RunNotFoundError, match="'ghost'.*known runs: none"):
        store.run("ghost")
    _add_run(store, "r", tmp_path)
    with pytest.raises(ValueError, match="train_los"):
        store.upsert_epoch("r", 1, train_los=0.1)
    with pytest.raises(ValueError, match="val_mean_accuracy"):
        store.upsert_epoch("r", 1, val_mean_accuracy=1.5)
    with pytest.raises(ValueError, match="epoch"):
        store.upsert_epoch("r", -1, train_loss=0.1)
    with pytest.raises(ValueError, match="status"):
        store.upsert_run("r", run_dir=tmp_path, config={}, status="done")
    with pytest.raises(ValueError, match="started_at"):
        store.upsert_run("r", run_dir=tmp_path, config={}, status="running", started_at="yesterday")
    with pytest.raises(ValueError, match="Smilling"):
        store.upsert_attribute_metrics("r", 1, "val", {"Smilling": {"accuracy": 1, "balanced_accuracy": 1, "f1": 1}})
    with pytest.raises(ValueError, match="Smiling.*'f1'"):
        store.upsert_attribute_metrics("r", 1, "val", {"Smiling": {"accuracy": 1, "balanced_accuracy": 1}})
    with pytest.raises(ValueError, match="validation"):
        store.upsert_attribute_metrics("r", 1, "validation", {"Smiling": _figures(random.Random(0))})
    with pytest.raises(ValueError, match="imagez"):
        store.upsert_scoring_job("j", imagez=3)
    with pytest.raises(ValueError, match="no model of run 'r' epoch 4"):
        store.upsert_scoring_job("j", model_run_id="r", model_epoch=4, status="running")
    assert store.count("epochs") == store.count("attribute_metrics") == store.count("scoring_jobs") == 0


# -- sync from a run folder ---------------------------------------------------------------------
def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _hand_written_run(run_dir: Path, epochs: int = 3, seed: int = 11) -> dict:
    """A run folder as train/evaluate/select write it, with random figures; returns what it holds."""
    rng = random.Random(seed)
    layout = RunLayout(run_dir)
    RunConfig(epochs=epochs, lr=0.002).save(run_dir)
    expected: dict = {"train": {}, "val": {}, "test": {}}
    for epoch in range(1, epochs + 1):
        train = {"loss": rng.uniform(0.1, 1), "accuracy": rng.uniform(0.5, 1), "images": 400,
                 "seconds": rng.uniform(5, 50), "images_per_second": rng.uniform(10, 100)}
        _write_json(layout.metrics("train", epoch), {"epoch": epoch, "split": "train", **train})
        expected["train"][epoch] = train
        expected["val"][epoch] = _evaluation(layout, "val", epoch, rng)
    val_by_epoch = {epoch: ev["mean_accuracy"] for epoch, ev in expected["val"].items()}
    best = max(val_by_epoch, key=lambda k: (val_by_epoch[k], -k))
    _write_json(layout.best, {"epoch": best, "val_mean_accuracy": val_by_epoch[best],
                              "val_by_epoch": {str(k): v for k, v in val_by_epoch.items()}})
    write_model_file(run_dir, epoch=best)
    expected["test"][best] = _evaluation(layout, "test", best, rng)
    expected["best"] = best
    # Files sync must skip: an interrupted atomic write and something unrelated.
    (layout.root / "metrics" / ".val_epoch_9.json.tmp-abc").write_text("{")
    (layout.root / "metrics" / "notes.txt").write_text("hello")
    return expected


def _evaluation(layout: RunLayout, split: str, epoch: int, rng: random.Random) -> dict:
    attributes = {
        name: {**_figures(rng), "majority_baseline": rng.uniform(0.5, 1), "threshold": 0.0} for name in ATTRIBUTES
    }
    data = {"epoch": epoch, "split": split, "images": 50,
            "mean_accuracy": sum(a["accuracy"] for a in attributes.values()) / len(attributes),
            "majority_baseline": sum(a["majority_baseline"] for a in attributes.values()) / len(attributes),
            "mean_balanced_accuracy": 0.5, "mean_f1": 0.5, "attributes": attributes}
    if split == "test":  # as evaluate writes them: with the digest and the model's sha256
        metrics.write_epoch_metrics(layout.root, split, epoch, data)
    else:
        _write_json(layout.metrics(split, epoch), data)
    return data


def test_sync_run_dir_records_the_run_folder(store, tmp_path):
    run_dir = tmp_path / "run"
    expected = _hand_written_run(run_dir)
    started = datetime(2024, 6, 1, 8, 0, tzinfo=timezone.utc)
    first = store.sync_run_dir("run-1", run_dir, dag_run_id="scheduled__1", started_at=started)
    again = store.sync_run_dir("run-1", run_dir, status="success")
    assert first == again == {"run_id": "run-1", "epochs": 3, "attribute_metrics": 4 * len(ATTRIBUTES),
                              "model_epoch": expected["best"]}
    assert (store.count("runs"), store.count("epochs"), store.count("models")) == (1, 3, 1)
    assert store.count("attribute_metrics") == 4 * len(ATTRIBUTES)

    run = store.run("run-1")
    assert run["config"] == RunConfig(epochs=3, lr=0.002).to_dict()
    assert run["status"] == "success" and run["started_at"] == started and run["dag_run_id"] == "scheduled__1"
    assert run["run_dir"] == str(run_dir.resolve())
    for row in run["epochs"]:
        train, val = expected["train"][row["epoch"]], expected["val"][row["epoch"]]
        assert row["train_loss"] == pytest.approx(train["loss"])
        assert row["train_accuracy"] == pytest.approx(train["accuracy"])
        assert row["train_images"] == train["images"]
        assert row["images_per_second"] == pytest.approx(train["images_per_second"])
        assert row["val_mean_accuracy"] == pytest.approx(val["mean_accuracy"])
        assert row["val_majority_baseline"] == pytest.approx(val["majority_baseline"])
    for metric in run["attribute_metrics"]:
        written = expected[metric["split"]][metric["epoch"]]["attributes"][metric["attribute"]]
        for key in ("accuracy", "balanced_accuracy", "f1", "majority_baseline"):
            assert metric[key] == pytest.approx(written[key])

    best, test = expected["best"], expected["test"][expected["best"]]["mean_accuracy"]
    (model,) = run["models"]
    assert model["epoch"] == best and model["path"] == str((run_dir / "model.pt").resolve())
    assert model["val_mean_accuracy"] == pytest.approx(expected["val"][best]["mean_accuracy"])
    assert model["test_mean_accuracy"] == pytest.approx(test)
    assert (run["best_epoch"], run["test_mean_accuracy"]) == (best, pytest.approx(test))

    # Flags are decisions made elsewhere: a later sync keeps them.
    registry.promote(store, "run-1", actor="test")
    store.sync_run_dir("run-1", run_dir)
    assert store.current_model()["run_id"] == "run-1"
    assert store.run("run-1")["status"] == "success"


def test_sync_of_a_run_in_progress(store, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = RunConfig(seed=5).to_dict()
    store.upsert_run("early", run_dir=run_dir, config=config, status="queued")
    assert store.sync_run_dir("early", run_dir)["epochs"] == 0  # no config.json yet: config kept
    assert store.run("early")["config"] == config and store.run("early")["status"] == "queued"
    store.sync_run_dir("fresh", run_dir)
    assert store.run("fresh")["config"] == {} and store.run("fresh")["status"] == "running"
    RunConfig().save(run_dir)
    store.sync_run_dir("early", run_dir, status="running")
    assert store.run("early")["config"] == RunConfig().to_dict()
    _write_json(RunLayout(run_dir).metrics("train", 1),
                {"epoch": 1, "split": "train", "loss": 0.4, "accuracy": 0.7, "images": 10, "seconds": 1.0,
                 "images_per_second": 10.0})
    store.sync_run_dir("early", run_dir)
    (epoch,) = store.run("early")["epochs"]
    assert epoch["train_loss"] == pytest.approx(0.4) and epoch["val_mean_accuracy"] is None
    assert store.runs()[0]["best_epoch"] is None


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("val_epoch_2.json", "{not json", "not valid JSON"),
        ("val_epoch_2.json", json.dumps({"epoch": 3, "split": "val"}), "'epoch' is 3"),
        ("test_epoch_2.json", json.dumps({"epoch": 2, "split": "val"}), "'split' is 'val'"),
        ("train_epoch_2.json", json.dumps({"epoch": 2, "loss": 0.1}), "missing field 'accuracy'"),
        ("val_epoch_2.json", json.dumps({"epoch": 2, "mean_accuracy": 0.5}), "missing field 'attributes'"),
        ("val_epoch_2.json", json.dumps({"epoch": 2, "mean_accuracy": 1.2, "attributes": {}}), "mean_accuracy"),
    ],
)
def test_sync_names_the_bad_file(store, tmp_path, name, content, message):
    run_dir = tmp_path / "run"
    _hand_written_run(run_dir, epochs=1)
    (run_dir / "metrics" / name).write_text(content)
    with pytest.raises(ValueError, match=message) as error:
        store.sync_run_dir("bad", run_dir)
    assert name in str(error.value)
    assert store.count("runs") == store.count("attribute_metrics") == 0  # nothing half-written


def test_sync_of_a_missing_folder(store, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        store.sync_run_dir("x", tmp_path / "nowhere")


# -- text ---------------------------------------------------------------------------------------
def test_format_run_and_runs_show_the_figures(store, tmp_path, store_url, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    expected = _hand_written_run(run_dir)
    store.sync_run_dir("run-7", run_dir, status="success")
    best = expected["best"]

    shown = format_run(store, "run-7")
    for epoch, train in expected["train"].items():
        assert f"{train['loss']:.4f}" in shown
        assert f"{expected['val'][epoch]['mean_accuracy']:.4f}" in shown
    for name, figures in expected["test"][best]["attributes"].items():
        line = next(line for line in shown.splitlines() if line.startswith(name + " "))
        for key in ("accuracy", "balanced_accuracy", "f1"):
            assert f"{figures[key]:.4f}" in line
            assert f"{expected['val'][best]['attributes'][name][key]:.4f}" in line
    assert f"best epoch {best}" in shown
    assert f"model epoch {best}: {(run_dir / 'model.pt').resolve()} (not published)" in shown
    registry.publish(store, run_dir, run_id="run-7", actor="test")
    assert "(champion: first published model)" in format_run(store, "run-7")

    listing = format_runs(store)
    (row,) = [line for line in listing.splitlines() if line.startswith("run-7")]
    assert row.split()[1:4] == ["success", "3", str(best)]
    assert f"{expected['test'][best]['mean_accuracy']:.4f}" in row

    from faceattr.cli import main

    monkeypatch.setenv("FACEATTR_DB_URL", store_url)
    assert main(["runs"]) == 0
    assert "run-7" in capsys.readouterr().out


def test_format_of_an_empty_store(store):
    assert "no runs" in format_runs(store)
