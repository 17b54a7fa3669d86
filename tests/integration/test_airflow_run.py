"""faceattr_train and faceattr_score run end to end under `dag.test()` and `airflow dags test`.

A tiny synthetic set (60 images), resnet18 from scratch, 2 epochs of the 3 parsed epoch slots,
on the CPU. Checks the run's task states (the third epoch's tasks skipped, not failed), the run
folder, the store's rows and the CSVs; then that bad conf and paths outside FACEATTR_DATA_ROOTS
are refused before any task reads or writes a file.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

import pytest

from airflow_env import AIRFLOW, DAGS, MAX_EPOCHS, REPO, airflow_environ, configure, migrate, synthetic_source, \
    unlabelled_faces

configure()  # before airflow is imported

from airflow.dag_processing.dagbag import DagBag  # noqa: E402
from airflow.sdk.exceptions import ParamValidationError  # noqa: E402

from faceattr.attributes import ATTRIBUTES  # noqa: E402
from faceattr.run.layout import RunLayout  # noqa: E402

pytestmark = pytest.mark.slow

EPOCHS = 2  # of MAX_EPOCHS parsed slots
SKIPPED = {f"epoch_{k:02d}.{step}" for k in range(EPOCHS + 1, MAX_EPOCHS + 1) for step in ("train", "validate")}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """FACEATTR_HOME with a download source and a private image folder; the environment a deployment sets."""
    from PIL import Image

    home = tmp_path_factory.mktemp("faceattr-home")
    source = synthetic_source(home / "source")
    private = unlabelled_faces(source, home / "private", 5)
    Image.new("L", (120, 150), 128).save(private / "gray.png")
    (private / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")

    env = {
        "FACEATTR_HOME": str(home),
        "FACEATTR_DATA_ROOTS": str(home),
        "FACEATTR_DB_URL": f"sqlite:///{home / 'faceattr.db'}",
    }
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        migrate(configure())
        yield {"home": home, "private": private, "source": source, "env": env}


@pytest.fixture(scope="module")
def dags(workspace):
    bag = DagBag(dag_folder=str(DAGS), known_pools={"default_pool", "gpu"})
    assert bag.import_errors == {}
    return bag.dags


def small_conf(workspace, **changes) -> dict:
    """Demo-sized: only resnet18's head trains (freeze_children 9), this file tests orchestration, not learning."""
    home = workspace["home"]
    return {
        "source": str(workspace["source"]), "root": str(home / "root"), "output": str(home / "runs"),
        "arch": "resnet18", "weights": "none", "freeze_children": 9, "epochs": EPOCHS, "batch_size": 16, "lr": 3e-3,
        "device": "cpu", "num_workers": 0, "seed": 3, "private_images": str(workspace["private"]),
        **changes,
    }


def state(value) -> str:
    return getattr(value, "value", value)


def task_states(dag_run) -> dict[str, str]:
    return {ti.task_id: state(ti.state) for ti in dag_run.get_task_instances()}


def train_run_count() -> int:
    from airflow.models.dagrun import DagRun

    return len(DagRun.find(dag_id="faceattr_train"))


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


@pytest.fixture(scope="module")
def train_run(dags, workspace):
    dag_run = dags["faceattr_train"].test(run_conf=small_conf(workspace))
    from faceattr.run.layout import sanitize_run_id

    return dag_run, workspace["home"] / "runs" / sanitize_run_id(dag_run.run_id)


def test_train_dag_succeeds_and_skips_epochs_past_the_run(train_run):
    dag_run, _ = train_run
    states = task_states(dag_run)
    assert state(dag_run.state) == "success", states
    assert {task for task, state in states.items() if state == "skipped"} == SKIPPED
    assert {task for task, state in states.items() if state != "skipped"} == set(states) - SKIPPED
    assert all(state == "success" for task, state in states.items() if task not in SKIPPED), states


def test_train_dag_writes_the_run_folder(train_run):
    _, run_dir = train_run
    layout = RunLayout(run_dir)
    assert layout.trained_epochs() == list(range(1, EPOCHS + 1))
    best = json.loads(layout.best.read_text())
    tested = json.loads(layout.metrics("test", best["epoch"]).read_text())
    assert 0.0 <= tested["mean_accuracy"] <= 1.0 and set(tested["attributes"]) == set(ATTRIBUTES)
    assert layout.model.is_file()
    assert any(path.suffix == ".png" for path in layout.report.iterdir())
    assert (layout.report / "index.html").is_file()
    rows = read_csv(run_dir / "private_predictions.csv")
    assert rows[0] == ["image_id", *ATTRIBUTES]
    errors = read_csv(run_dir / "private_predictions.errors.csv")
    assert [row[0] for row in errors[1:]] == ["broken.jpg"]
    assert len(rows) - 1 + len(errors) - 1 == 7  # five faces, one grayscale PNG, one corrupt file


def test_store_holds_the_run_its_epochs_and_the_current_model(train_run):
    from faceattr.store.store import Store

    dag_run, run_dir = train_run
    with Store.from_env() as store:
        run = store.run(run_dir.name)
        current = store.current_model()
        job = store.scoring_job(f"{run_dir.name}-private")
    assert run["status"] == "success" and run["dag_run_id"] == dag_run.run_id
    assert [epoch["epoch"] for epoch in run["epochs"]] == list(range(1, EPOCHS + 1))
    assert all(epoch["val_mean_accuracy"] is not None for epoch in run["epochs"])
    assert current["run_id"] == run_dir.name and Path(current["path"]) == RunLayout(run_dir).model.resolve()
    assert (job["status"], job["rows"], job["errors"]) == ("success", 6, 1)


def test_rerunning_a_task_redoes_only_its_own_outputs(train_run, workspace):
    """What clearing epoch_01.validate in the UI does: its metrics are rewritten, nothing else is touched."""
    from faceattr.orchestration import tasks as orchestrate

    dag_run, run_dir = train_run
    layout = RunLayout(run_dir)
    others = [layout.checkpoint(1), layout.checkpoint(2), layout.metrics("val", 2), layout.best, layout.model]
    before = {path: path.stat().st_mtime_ns for path in others}
    target = layout.metrics("val", 1)
    old, old_time = json.loads(target.read_text()), target.stat().st_mtime_ns
    orchestrate.validate({**_defaults(), **small_conf(workspace)}, dag_run.run_id, 1)
    assert target.stat().st_mtime_ns != old_time
    assert json.loads(target.read_text())["mean_accuracy"] == old["mean_accuracy"]
    assert {path: path.stat().st_mtime_ns for path in others} == before


def _defaults() -> dict:
    from faceattr.orchestration import params as forms

    return {name: spec["default"] for name, spec in forms.train_params().items()}


def test_score_dag_writes_the_csv_and_records_the_job(dags, train_run, workspace):
    out = workspace["home"] / "scores" / "private.csv"
    conf = {"images": str(workspace["private"]), "output": str(out), "model": "latest", "device": "cpu"}
    dag_run = dags["faceattr_score"].test(run_conf=conf)
    assert task_states(dag_run) == {"check_request": "success", "score_images": "success"}
    rows = read_csv(out)
    assert rows[0] == ["image_id", *ATTRIBUTES]
    assert [row[0] for row in rows[1:]] == sorted(["face_0.jpg", "face_1.jpg", "face_2.jpg", "face_3.jpg",
                                                   "face_4.jpg", "gray.png"])
    assert all(value in ("-1", "1") for row in rows[1:] for value in row[1:])
    assert [row[0] for row in read_csv(out.with_name("private.errors.csv"))[1:]] == ["broken.jpg"]

    from faceattr.run.layout import sanitize_run_id
    from faceattr.store.store import Store

    with Store.from_env() as store:
        job = store.scoring_job(f"faceattr_score-{sanitize_run_id(dag_run.run_id)}")
    _, run_dir = train_run
    assert (job["status"], job["images"], job["rows"], job["errors"]) == ("success", 7, 6, 1)
    assert (job["output_csv"], job["model_run_id"]) == (str(out.resolve()), run_dir.name)


@pytest.mark.parametrize("images, output", [("/etc", "{home}/scores/etc.csv"),
                                            ("{home}/private", "{home}/../outside.csv")])
def test_score_dag_refuses_paths_outside_the_roots(dags, workspace, images, output):
    home = workspace["home"]
    conf = {"images": images.format(home=home), "output": output.format(home=home)}
    dag_run = dags["faceattr_score"].test(run_conf=conf)
    states = task_states(dag_run)
    assert states == {"check_request": "failed", "score_images": "upstream_failed"}
    assert not Path(conf["output"]).exists()


def test_a_root_outside_the_data_roots_fails_the_first_task_at_once(dags, workspace):
    dag_run = dags["faceattr_train"].test(run_conf=small_conf(workspace, root="/etc"))
    states = task_states(dag_run)
    assert state(dag_run.state) == "failed"
    assert states["download"] == "failed" and states["split"] == "upstream_failed"
    assert set(states.values()) == {"failed", "upstream_failed"}
    assert [ti.try_number for ti in dag_run.get_task_instances() if ti.task_id == "download"] == [1]  # no retry


def test_epochs_zero_is_refused_before_any_task(dags, workspace):
    runs = train_run_count()
    with pytest.raises(ParamValidationError, match="epochs"):
        dags["faceattr_train"].test(run_conf=small_conf(workspace, epochs=0))
    done = subprocess.run(
        [str(AIRFLOW), "dags", "test", "faceattr_train", "-c", json.dumps({"epochs": 0})],
        env={**os.environ, **airflow_environ(configure()), **workspace["env"]},
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert done.returncode != 0
    assert "epochs" in done.stdout + done.stderr and "0 is less than the minimum of 1" in done.stdout + done.stderr
    assert train_run_count() == runs  # no run was created, so no task ran
