"""Scheduled retraining on data that changes, through the DAGs under `dag.test()`: each week
faceattr_data acquires the new data and announces it on the `faceattr/data` asset, which
faceattr_train is scheduled on; the run it starts is published through the gate. Week 2 (new
identities) beats the champion on the images the champion never saw and is announced on
`faceattr/model`; week 3 (a batch of flipped labels) stays a challenger with the measured reason;
faceattr_score with `model: champion` scores with week 2's model; a week-1 task re-run after week
3's download reads week-1 files. test_retraining.py tells the same story without Airflow.
"""
from __future__ import annotations

import json

import pytest

from airflow_env import DAGS, configure, migrate, unlabelled_faces

configure()  # before airflow is imported

from airflow.dag_processing.dagbag import DagBag  # noqa: E402

from faceattr.data import versions  # noqa: E402
from faceattr.fsutil import sha256_of  # noqa: E402
from faceattr.orchestration import params as forms, tasks as orchestrate  # noqa: E402
from faceattr.run.layout import RunLayout, sanitize_run_id  # noqa: E402
from faceattr.store import registry  # noqa: E402
from faceattr.store.gate import SHARED_RULE  # noqa: E402
from faceattr.store.store import Store  # noqa: E402
from weekly_data import GATE_MIN_IMAGES, TRAINING, WEEK2_ADDED, WEEK3_ADDED, weekly_sources  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def story(tmp_path_factory):
    """FACEATTR_HOME with three weeks of sources; faceattr_train parsed to run on new data too."""
    home = tmp_path_factory.mktemp("faceattr-retraining")
    weeks = weekly_sources(home / "sources")
    private = unlabelled_faces(weeks[1], home / "private", 4)
    env = {"FACEATTR_HOME": str(home), "FACEATTR_DATA_ROOTS": str(home),
           "FACEATTR_DB_URL": f"sqlite:///{home / 'faceattr.db'}", "FACEATTR_TRAIN_ON_DATA": "1",
           "FACEATTR_TRAIN_SCHEDULE": "@weekly"}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        migrate(configure())
        bag = DagBag(dag_folder=str(DAGS), known_pools={"default_pool", "gpu"})
        assert bag.import_errors == {}
        yield {"home": home, "weeks": weeks, "private": private, "dags": bag.dags}


def state(value) -> str:
    return getattr(value, "value", value)


def task_states(dag_run) -> dict[str, str]:
    return {ti.task_id: state(ti.state) for ti in dag_run.get_task_instances()}


def asset_events(name: str) -> list[dict]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        query = select(AssetEvent.extra).join(AssetModel, AssetEvent.asset_id == AssetModel.id) \
            .where(AssetModel.name == name).order_by(AssetEvent.id)
        return [dict(extra or {}) for extra in session.scalars(query)]


def train_conf(story, week: int) -> dict:
    home = story["home"]
    return {"source": str(story["weeks"][week]), "root": str(home / "root"), "output": str(home / "runs"),
            "gate_min_images": GATE_MIN_IMAGES, **TRAINING}


def a_week(story, week: int) -> dict:
    """faceattr_data on this week's source, then the faceattr_train run its data event starts."""
    dags = story["dags"]
    data_events, model_events = len(asset_events(orchestrate.DATA_ASSET_NAME)), \
        len(asset_events(orchestrate.MODEL_ASSET_NAME))
    checked = dags["faceattr_data"].test(run_conf={"source": str(story["weeks"][week]),
                                                   "root": str(story["home"] / "root")})
    assert task_states(checked) == {"check_source": "success", "announce_data": "success"}
    data_event = asset_events(orchestrate.DATA_ASSET_NAME)[data_events:]
    train = dags["faceattr_train"]
    # The event starts faceattr_train (its schedule names the asset); dag.test() runs it here.
    assert orchestrate.DATA_ASSET_NAME in [asset.name for asset in train.timetable.asset_condition.objects]
    trained = train.test(run_conf=train_conf(story, week))
    states = task_states(trained)
    assert state(trained.state) == "success", states
    run_dir = story["home"] / "runs" / sanitize_run_id(trained.run_id)
    with Store.from_env() as store:
        (published,) = [model for model in registry.candidates(store) if model["run_id"] == run_dir.name]
    return {"data_event": data_event, "states": states, "run_dir": run_dir, "published": published,
            "model_events": asset_events(orchestrate.MODEL_ASSET_NAME)[model_events:]}


def test_three_weeks_of_data_through_the_dags(story, capsys):
    first = a_week(story, 1)
    (event,) = first["data_event"]
    v1 = event["version"]
    assert event["previous_version"] is None and event["counts"]["images"] == 64
    assert first["published"]["reason"] == "first published model"
    assert [e["run"] for e in first["model_events"]] == [first["run_dir"].name]

    second = a_week(story, 2)
    (event,) = second["data_event"]
    assert (event["previous_version"], event["changes"]["images_added"]) == (v1, WEEK2_ADDED)
    assert json.loads(RunLayout(second["run_dir"]).data_version.read_text())["version"] == event["version"]
    published, compared = second["published"], second["published"]["comparison"]
    assert compared["rule"] == SHARED_RULE and compared["images"] >= GATE_MIN_IMAGES
    assert published["state"] == "champion" and compared["challenger"] > compared["champion"], published["reason"]
    assert second["states"]["announce_champion"] == "success"
    (model_event,) = second["model_events"]
    assert (model_event["run"], model_event["previous_champion"]["run_id"]) == \
        (second["run_dir"].name, first["run_dir"].name)
    assert model_event["comparison"]["images"] == compared["images"]

    third = a_week(story, 3)
    (event,) = third["data_event"]
    assert event["changes"]["images_added"] == WEEK3_ADDED
    published, compared = third["published"], third["published"]["comparison"]
    assert published["state"] == "challenger" and compared["rule"] == SHARED_RULE
    assert compared["champion"] - compared["challenger"] > 0.05, published["reason"]
    assert f"does not beat champion run {second['run_dir'].name}: mean accuracy on {compared['images']} shared " \
        "test images" in published["reason"]
    assert third["states"]["announce_champion"] == "skipped" and third["model_events"] == []
    with capsys.disabled():  # the measured story, for the record
        for week, seen in enumerate((first, second, third), start=1):
            print(f"\nweek {week}: {seen['published']['state']}: {seen['published']['reason']}")

    # faceattr_score with model: champion scores with week 2's model, pinned by its sha256.
    scored = story["dags"]["faceattr_score"].test(run_conf={"images": str(story["private"]), "model": "champion",
                                                            "device": "cpu"})
    assert task_states(scored) == {"check_request": "success", "score_images": "success"}
    week2_model = RunLayout(second["run_dir"]).model
    with Store.from_env() as store:
        job = store.scoring_job(f"faceattr_score-{sanitize_run_id(scored.run_id)}")
        assert registry.champion(store)["run_id"] == second["run_dir"].name
        recorded = {run["id"]: run["data_version"] for run in store.runs()}
    assert (job["status"], job["model_run_id"], job["model_sha256"]) == \
        ("success", second["run_dir"].name, sha256_of(week2_model))
    assert recorded[first["run_dir"].name] == v1

    # Week 1's run, a task re-run after week 3's download: it reads week 1's files.
    week1 = first["run_dir"]
    root = story["home"] / "root"
    assert versions.current_version(root) == third["data_event"][0]["version"]
    assert versions.run_dataset_dir(week1, root) == versions.version_dir(root, v1)
    before = json.loads(RunLayout(week1).metrics("val", 1).read_text())
    params = {**{name: spec["default"] for name, spec in forms.train_params().items()}, **train_conf(story, 1)}
    again = orchestrate.validate(params, _dag_run_id(week1), 1)
    assert (again["images"], again["mean_accuracy"]) == (before["images"], round(before["mean_accuracy"], 4))


def _dag_run_id(run_dir) -> str:
    with Store.from_env() as store:
        return store.run(run_dir.name)["dag_run_id"]
