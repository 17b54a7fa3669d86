"""The DAG files parse cleanly and light, declare the expected tasks, pools and params, and refuse bad input.

No task runs here (see test_airflow_run.py); this file stays fast.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_env import DAGS, MAX_EPOCHS, REPO, configure

configure()  # before airflow is imported

from airflow.dag_processing.dagbag import DagBag  # noqa: E402
from airflow.sdk import TriggerRule  # noqa: E402
from airflow.sdk.exceptions import ParamValidationError  # noqa: E402
from airflow.serialization.serialized_objects import DagSerialization  # noqa: E402

from faceattr import settings  # noqa: E402
from faceattr.orchestration import params as forms, scoring, tasks as orchestrate  # noqa: E402
from faceattr.data.access import AccessError, check_path, data_roots  # noqa: E402
from faceattr.run.config import KNOWN_ARCHS, ConfigError, RunConfig  # noqa: E402
from faceattr.fsutil import write_json  # noqa: E402
from faceattr.run.layout import RunLayout, sanitize_run_id  # noqa: E402
from faceattr.run.timing import duration, run_eta  # noqa: E402

HEAVY = ("torch", "torchvision", "pandas", "sklearn")


@pytest.fixture(scope="module")
def dagbag() -> DagBag:
    """The DAGs as parsed with the default settings (no schedule, no standing set)."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ("FACEATTR_TRAIN_SCHEDULE", "FACEATTR_STANDING_SET", "FACEATTR_GPU_POOL", "FACEATTR_GPU_QUEUE",
                     "FACEATTR_TRAIN_ON_DATA", "FACEATTR_DATA_SCHEDULE", "FACEATTR_GPU_RETRY_DELAY_S"):
            patch.delenv(name, raising=False)
        return DagBag(dag_folder=str(DAGS), known_pools={"default_pool", "gpu"})


def scheduler_params(dag):
    """The params as the scheduler holds them: what create_dagrun validates a run's conf against."""
    return DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag)).params


def test_dag_files_import_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == {"faceattr_train", "faceattr_score", "faceattr_data"}


def test_train_dag_tasks_and_dependencies(dagbag):
    dag = dagbag.dags["faceattr_train"]
    trains = [f"epoch_{k:02d}.train" for k in range(1, MAX_EPOCHS + 1)]
    validates = [f"epoch_{k:02d}.validate" for k in range(1, MAX_EPOCHS + 1)]
    assert set(dag.task_ids) == {"download", "split", "cache_images", *trains, *validates, "select_best", "test", "report",
                                 "publish_model", "announce_champion", "score_private"}
    assert [group for group in dag.task_group.children if group.startswith("epoch_")] == \
        [f"epoch_{k:02d}" for k in range(1, MAX_EPOCHS + 1)]
    upstream = {task.task_id: set(task.upstream_task_ids) for task in dag.tasks}
    assert upstream["split"] == {"download"}
    assert upstream["cache_images"] == {"split"}
    assert upstream["epoch_01.train"] == {"cache_images"}
    # Epoch K+1 trains after epoch K is validated: the doc says GPU tasks take turns, never overlap.
    assert all(upstream[trains[k + 1]] == {validates[k]} for k in range(MAX_EPOCHS - 1))
    assert all(upstream[v] == {t} for t, v in zip(trains, validates))
    # A validate decides whether the next epoch trains; later epochs are skipped by Airflow, unstarted.
    assert all(dag.get_task(t).trigger_rule == TriggerRule.ALL_SUCCESS for t in trains)
    assert upstream["select_best"] == set(validates)
    assert upstream["score_private"] == upstream["announce_champion"] == {"publish_model"}
    assert dag.get_task("select_best").trigger_rule == TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS
    assert dag.catchup is False


def test_gpu_work_runs_in_the_gpu_pool(dagbag):
    gpu_tasks = {f"epoch_{k:02d}.{step}" for k in range(1, MAX_EPOCHS + 1) for step in ("train", "validate")}
    gpu_tasks |= {"test", "score_private"}
    for dag_id, expected in (("faceattr_train", gpu_tasks), ("faceattr_score", {"score_images"})):
        dag = dagbag.dags[dag_id]
        assert {t.task_id for t in dag.tasks if t.pool == "gpu"} == expected
        assert all(t.queue == "default" and t.pool_slots == 1 for t in dag.tasks if t.pool == "gpu")


def test_the_gpu_pool_has_one_slot_wherever_it_is_created():
    """The DAG's doc says GPU tasks take turns: every script that creates the pool gives it one slot."""
    import re

    created = {}
    for path in (REPO / "scripts" / "airflow.sh", REPO / "scripts" / "run.sh", REPO / "docker" / "docker-compose.yaml"):
        created[path.name] = re.findall(r"airflow pools set gpu (\d+)", path.read_text())
    assert all(slots == ["1"] for slots in created.values()), created
    assert "take turns" in (DAGS / "faceattr_train.py").read_text()


def test_every_task_has_docs_download_backs_off_and_epochs_retry_once(dagbag, monkeypatch):
    for dag in dagbag.dags.values():
        assert dag.doc_md
        for task in dag.tasks:
            assert task.doc_md, f"{dag.dag_id}.{task.task_id} has no doc_md"
    download = dagbag.dags["faceattr_train"].get_task("download")
    assert download.retries >= 2 and download.retry_exponential_backoff > 1
    for step in ("train", "validate"):
        task = dagbag.dags["faceattr_train"].get_task(f"epoch_01.{step}")
        assert (task.retries, task.retry_delay.total_seconds()) == (1, 60)
    monkeypatch.setenv("FACEATTR_GPU_RETRY_DELAY_S", "7")
    reparsed = DagBag(dag_folder=str(DAGS / "faceattr_train.py"), known_pools={"default_pool", "gpu"})
    assert reparsed.dags["faceattr_train"].get_task("epoch_02.train").retry_delay.total_seconds() == 7


def test_model_asset_is_emitted_on_promotion_only(dagbag):
    dag = dagbag.dags["faceattr_train"]
    assert dag.get_task("publish_model").outlets == []
    assert [asset.name for asset in dag.get_task("announce_champion").outlets] == [orchestrate.MODEL_ASSET_NAME]
    promoted = {"run": "r", "state": "champion", "reason": "first published model", "promoted": True, "epoch": 2}
    assert orchestrate.champion_event(promoted)["run"] == "r"
    with pytest.raises(orchestrate.Skip, match="run r is challenger, not a new champion: does not beat"):
        orchestrate.champion_event({**promoted, "state": "challenger", "promoted": False,
                                    "reason": "does not beat champion run q"})


def test_train_params_follow_the_run_config_schema(dagbag):
    params = dagbag.dags["faceattr_train"].params
    schema = RunConfig.json_schema()
    assert set(schema) | {"source", "output", "private_images", "promote", "promote_min_gain", "gate_min_images"} \
        == set(params.keys())
    for name, field_schema in schema.items():
        param_schema = params.get_param(name).schema
        for key in ("minimum", "maximum", "exclusiveMinimum"):
            if key in field_schema and not (name == "epochs" and key == "maximum"):
                assert param_schema[key] == field_schema[key], (name, key)
    assert params.get_param("arch").schema["enum"] == list(KNOWN_ARCHS)
    assert params.get_param("epochs").schema["maximum"] == MAX_EPOCHS
    assert params["epochs"] == MAX_EPOCHS  # the default is capped by the parsed task slots
    assert params.get_param("root").schema["section"] == "Data"
    assert all(params.get_param(name).description for name in params.keys())


@pytest.mark.parametrize(
    "conf, field",
    [({"epochs": 0}, "epochs"), ({"epochs": MAX_EPOCHS + 1}, "epochs"), ({"arch": "no_such_net"}, "arch"),
     ({"lr": -0.1}, "lr"), ({"batch_size": "64"}, "batch_size"), ({"split": "by_hair"}, "split"),
     ({"promote": "always"}, "promote"), ({"promote_min_gain": -0.01}, "promote_min_gain")],
)
def test_bad_conf_is_refused_before_a_run_starts(dagbag, conf, field):
    # The same call create_dagrun makes for the trigger form, the REST API and `airflow dags test -c`.
    params = scheduler_params(dagbag.dags["faceattr_train"])
    with pytest.raises(ParamValidationError, match=field):
        params.deep_merge(conf).validate()


def test_good_conf_is_accepted(dagbag):
    params = scheduler_params(dagbag.dags["faceattr_train"])
    values = params.deep_merge({"epochs": 2, "arch": "resnet18", "weights": "none", "lr": 0.01}).validate()
    config = RunConfig.from_dict({k: values[k] for k in RunConfig.json_schema()})
    assert (config.epochs, config.arch, config.lr) == (2, "resnet18", 0.01)
    assert config.freeze_children == 0  # the form leaves it empty: nothing frozen when training from scratch


def test_score_params_require_images(dagbag):
    params = scheduler_params(dagbag.dags["faceattr_score"])
    with pytest.raises(ParamValidationError, match="images"):
        params.validate()
    assert params.deep_merge({"images": "/data/x"}).validate()["model"] == "champion"


@pytest.mark.parametrize("name", ["faceattr_train.py", "faceattr_score.py", "faceattr_data.py"])
def test_dag_file_parses_without_heavy_imports(name):
    """A fresh interpreter imports Airflow, then the DAG file alone: no torch, pandas or sklearn is loaded.
    (How fast parsing is belongs to a benchmark, not to a timed test on a shared machine.)"""
    script = (
        "import json, runpy, sys\n"
        "import airflow.sdk\n"
        f"runpy.run_path({str(DAGS / name)!r})\n"
        f"print(json.dumps({{'heavy': [m for m in {HEAVY!r} if m in sys.modules]}}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env=os.environ.copy(), cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["heavy"] == []


def test_schedules_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("FACEATTR_TRAIN_SCHEDULE", "@weekly")
    monkeypatch.setenv("FACEATTR_STANDING_SET", "/srv/faceattr/standing")
    dags = DagBag(dag_folder=str(DAGS), known_pools={"default_pool", "gpu"}).dags
    train, score = dags["faceattr_train"], dags["faceattr_score"]
    assert train.timetable.expression in ("@weekly", "0 0 * * 0") and train.catchup is False
    assert [asset.name for asset in score.timetable.asset_condition.objects] == [orchestrate.MODEL_ASSET_NAME]
    assert score.params["images"] == "/srv/faceattr/standing"


@pytest.mark.parametrize("times, on_data, kind", [
    ("@weekly", "1", "AssetOrTimeSchedule"), ("", "1", "AssetTriggeredTimetable"), ("@weekly", "0", "CronTriggerTimetable"),
])
def test_train_runs_on_new_data_on_time_or_both(monkeypatch, times, on_data, kind):
    monkeypatch.setenv("FACEATTR_TRAIN_SCHEDULE", times)
    monkeypatch.setenv("FACEATTR_TRAIN_ON_DATA", on_data)
    monkeypatch.setenv("FACEATTR_DATA_SCHEDULE", "@daily")
    dags = DagBag(dag_folder=str(DAGS), known_pools={"default_pool", "gpu"}).dags
    train, data = dags["faceattr_train"], dags["faceattr_data"]
    assert type(train.timetable).__name__ == kind
    if on_data == "1":
        assert [asset.name for asset in train.timetable.asset_condition.objects] == [orchestrate.DATA_ASSET_NAME]
    assert data.timetable.can_be_scheduled
    assert [asset.name for asset in data.get_task("announce_data").outlets] == [orchestrate.DATA_ASSET_NAME]


def test_the_data_event_fires_for_a_new_version_only():
    new = {"status": "downloaded", "version": "b2", "previous_version": "a1", "counts": {"images": 9},
           "changes": {"images_added": 3}, "source": "/src", "root": "/root"}
    assert orchestrate.data_event(new) == {key: new[key] for key in ("version", "previous_version", "counts",
                                                                     "changes", "source", "root")}
    with pytest.raises(orchestrate.Skip, match="data up-to-date: version a1, nothing new"):
        orchestrate.data_event({**new, "status": "up-to-date", "version": "a1"})


def test_no_schedule_by_default(dagbag):
    assert all(dag.timetable.can_be_scheduled is False for dag in dagbag.dags.values())


def test_max_epochs_setting_is_checked(monkeypatch):
    monkeypatch.setenv("FACEATTR_MAX_EPOCHS", "0")
    with pytest.raises(ValueError, match="FACEATTR_MAX_EPOCHS"):
        settings.max_epochs()
    monkeypatch.setenv("FACEATTR_MAX_EPOCHS", "")
    assert settings.max_epochs() == 12
    assert orchestrate.epoch_group_ids(12)[-1] == "epoch_12"
    assert orchestrate.epoch_group_ids(100)[0] == "epoch_001"


# -- paths under FACEATTR_DATA_ROOTS ------------------------------------------------------------
@pytest.fixture
def data_root(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    monkeypatch.setenv("FACEATTR_DATA_ROOTS", os.pathsep.join([str(root), str(tmp_path / "other")]))
    return root


def test_paths_under_a_root_are_allowed(data_root):
    assert check_path(str(data_root / "images"), "images") == data_root.resolve() / "images"
    assert check_path(data_root / "scores" / "new.csv", "output") == data_root.resolve() / "scores" / "new.csv"
    assert check_path(str(data_root / "images" / ".." / "x.csv")) == data_root.resolve() / "x.csv"
    assert len(data_roots()) == 2


@pytest.mark.parametrize("path", ["/etc/passwd", "/etc", "{root}/../../etc", "{root}/images/../../outside.csv", "/"])
def test_paths_outside_the_roots_are_refused(data_root, path):
    with pytest.raises(AccessError, match="outside the allowed data roots"):
        check_path(path.format(root=data_root), "images")


def test_symlink_out_of_a_root_is_refused(data_root, tmp_path):
    (tmp_path / "secret").mkdir()
    (data_root / "link").symlink_to(tmp_path / "secret")
    with pytest.raises(AccessError, match="outside the allowed data roots") as refused:
        check_path(str(data_root / "link" / "file.csv"), "output")
    assert str(tmp_path / "secret") not in str(refused.value)  # never where the link leads


@pytest.mark.parametrize("path, message", [("relative/images", "not an absolute path"), ("", "no path given"),
                                           ("/data/\x00x", "NUL")])
def test_unusable_paths_are_refused(data_root, path, message):
    with pytest.raises(AccessError, match=message):
        check_path(path, "images")


def test_roots_must_be_configured(monkeypatch):
    monkeypatch.delenv("FACEATTR_DATA_ROOTS", raising=False)
    with pytest.raises(AccessError, match="FACEATTR_DATA_ROOTS is not set"):
        check_path("/tmp/x", "images")


def test_score_request_outside_the_roots_is_refused_before_reading(data_root, monkeypatch):
    def no_store():
        raise AssertionError("the store was consulted before the paths were checked")

    monkeypatch.setattr(scoring, "store", no_store)
    with pytest.raises(AccessError, match="images"):
        scoring.check_score_request("/etc", str(data_root / "out.csv"), "latest", "manual__1")
    with pytest.raises(AccessError, match="output"):
        scoring.check_score_request(str(data_root / "images"), "/tmp/../etc/cron.d/x.csv", "latest", "manual__1")


# -- run context and early stopping -------------------------------------------------------------
def test_run_ids_become_safe_folder_names():
    name = sanitize_run_id("manual__2025-01-02T03:04:05.678+00:00")
    assert name == "manual__2025-01-02T03-04-05.678-00-00"
    assert sanitize_run_id("../../etc") == "etc"
    with pytest.raises(ValueError, match="run id"):
        sanitize_run_id("/..")


def test_unknown_conf_keys_are_refused():
    with pytest.raises(ConfigError, match="epocs"):
        forms.check_conf({"epocs": 2}, set(forms.train_params()))
    forms.check_conf({"epochs": 2}, set(forms.train_params()))


def test_skip_reason_for_epochs_past_the_run_and_early_stop(tmp_path):
    layout = RunLayout(tmp_path)
    for epoch, accuracy in ((1, 0.80), (2, 0.85), (3, 0.84), (4, 0.83)):
        write_json(layout.metrics("val", epoch), {"epoch": epoch, "split": "val", "mean_accuracy": accuracy})
    config = RunConfig(epochs=8, patience=2)
    assert orchestrate.skip_reason(config, tmp_path, 4) is None  # reads epochs 1..3: one without gain
    assert "early stop" in orchestrate.skip_reason(config, tmp_path, 5)  # epochs 3 and 4 did not beat 2
    assert orchestrate.skip_reason(config.replace(patience=0), tmp_path, 5) is None
    assert "trains 8 epoch" in orchestrate.skip_reason(config, tmp_path, 9)


def test_the_dag_stops_where_fit_stops(tmp_path):
    """skip_reason applies the one stopping rule (faceattr.run.selection) to every epoch before K."""
    from faceattr.run.selection import stop_reason

    layout = RunLayout(tmp_path)
    history = {1: 0.80, 2: 0.85, 3: 0.84, 4: 0.86, 5: 0.85, 6: 0.85}
    config = RunConfig(epochs=8, patience=2)
    for epoch, accuracy in history.items():
        write_json(layout.metrics("val", epoch), {"epoch": epoch, "split": "val", "mean_accuracy": accuracy})
    for epoch in range(2, 8):
        seen = {k: v for k, v in history.items() if k < epoch}
        assert (orchestrate.skip_reason(config, tmp_path, epoch) is None) == (stop_reason(config, seen) is None), epoch
    assert orchestrate.skip_reason(config, tmp_path, 6) is None and "early stop" in orchestrate.skip_reason(config, tmp_path, 7)


def test_xcom_figures_are_rounded():
    result = {"mean_accuracy": 0.7956249999999999, "counts": {"train": 48}, "path": Path("/x"), "nan": float("nan")}
    out = orchestrate.summary(result, "mean_accuracy", "counts", "path", "nan")
    assert out["mean_accuracy"] == 0.7956 and out["counts"] == {"train": 48} and out["path"] == "/x"
    assert out["nan"] != out["nan"]


def test_selection_table_lists_every_epoch_and_marks_the_best():
    table = orchestrate.selection_table({1: 0.81234, 2: 0.9, 3: 0.9}, 2, "mean_accuracy").splitlines()
    assert table == ["epoch  val mean_accuracy", "    1  0.8123", "    2  0.9000  <- best", "    3  0.9000"]


# -- failing fast and recording failures ---------------------------------------------------------
def _params(**changes) -> dict:
    return {**{name: spec["default"] for name, spec in forms.train_params().items()}, **changes}


def test_bad_settings_fail_the_first_task_without_retries(data_root):
    with pytest.raises(orchestrate.Refused, match="root: /etc is outside"):
        orchestrate.download(_params(root="/etc", output=str(data_root / "runs")))
    with pytest.raises(orchestrate.Refused, match="output"):
        orchestrate.download(_params(root=str(data_root), output="/var/tmp/runs"))
    with pytest.raises(orchestrate.Refused, match="no dataset here"):
        orchestrate.download(_params(root=str(data_root), output=str(data_root / "runs"), source=None))
    with pytest.raises(orchestrate.Refused, match="promote_min_gain"):  # the schema lets NaN through
        orchestrate.download(_params(root=str(data_root), output=str(data_root / "runs"), promote_min_gain=float("nan")))
    with pytest.raises(orchestrate.Refused, match="unknown key"):
        orchestrate.download(_params(root=str(data_root), output=str(data_root / "runs")), {"epoch": 3})
    assert not (data_root / "runs").exists()


def test_a_failed_run_is_recorded_in_the_store(tmp_path, monkeypatch):
    from faceattr.store.store import Store

    monkeypatch.setenv("FACEATTR_DB_URL", f"sqlite:///{tmp_path / 'store.db'}")
    run_dir = tmp_path / "runs" / "manual__1"  # not here: the dag-processor may have no run folders
    with Store.from_env() as store:
        store.upsert_run("manual__1", run_dir=run_dir, config=RunConfig().to_dict(), status="running")
    orchestrate.record_failure("manual__1", "task_failure")
    orchestrate.record_failure("manual__never-recorded", "task_failure")  # logs, never raises
    with Store.from_env() as store:
        run = store.run("manual__1")
    assert run["status"] == "failed" and run["finished_at"] is not None


def test_split_refuses_the_folder_of_another_dag_run(data_root, tmp_path, monkeypatch):
    """manual__a:b and manual__a-b give one folder name: the second run must not take the first one's."""
    from faceattr.store.store import Store

    monkeypatch.setenv("FACEATTR_DB_URL", f"sqlite:///{tmp_path / 'store.db'}")
    params = _params(root=str(data_root), output=str(data_root / "runs"))
    run = orchestrate.run_context(params, "manual__a:b")
    with Store.from_env() as store:
        store.upsert_run(run.id, run_dir=run.dir, config=RunConfig().to_dict(), status="running",
                         dag_run_id="manual__a:b")
    with pytest.raises(orchestrate.Refused, match="belongs to DAG run 'manual__a:b'"):
        orchestrate.split(params, "manual__a-b")
    orchestrate.refuse_another_dag_runs_folder(run)  # its own folder: a retry of split goes on


def test_the_last_validation_of_a_run_follows_only_selection_and_says_why(data_root, caplog):
    caplog.set_level("INFO", logger="faceattr.orchestration.tasks")
    params = _params(root=str(data_root), output=str(data_root / "runs"), epochs=2)
    groups = orchestrate.epoch_group_ids(12)
    assert orchestrate.after_validation(params, "manual__1", 1, groups, "select_best") == ["select_best",
                                                                                           "epoch_02.train"]
    assert orchestrate.after_validation(params, "manual__1", 2, groups, "select_best") == ["select_best"]
    assert orchestrate.after_validation(params, "manual__1", 12, groups, "select_best") == ["select_best"]
    lines = [r.getMessage() for r in caplog.records if r.name == "faceattr.orchestration.tasks"]
    assert lines == ["epochs 3-12 skipped (epoch_03 to epoch_12): this run trains 2 epoch(s)"]


def test_a_skipped_epoch_says_why_in_its_first_log_line(data_root, caplog):
    caplog.set_level("INFO", logger="faceattr.orchestration.tasks")
    params = _params(root=str(data_root), output=str(data_root / "runs"), epochs=2)
    with pytest.raises(orchestrate.Skip, match="trains 2 epoch"):
        orchestrate.train(params, "manual__1", 3)
    lines = [r.getMessage() for r in caplog.records if r.name == "faceattr.orchestration.tasks"]
    assert lines[0] == "skipped: epoch 3 not trained: this run trains 2 epoch(s)"


def test_the_run_eta_is_the_mean_epoch_times_the_epochs_left():
    config = RunConfig(epochs=5)
    assert run_eta(config, {}, 1) is None  # nothing measured yet
    assert run_eta(config, {1: 10.0, 2: 20.0}, 3) == pytest.approx(45.0)  # epochs 3, 4, 5 left
    assert duration(45) == "45 s" and duration(3725) == "1 h 02 min"


def test_scoring_reads_the_pinned_model_once_and_checks_its_sha256(tmp_path):
    import hashlib

    from faceattr.fsutil import ChecksumError, verify_digest

    path = tmp_path / "model.pt"
    path.write_bytes(b"the champion's weights")
    pinned = hashlib.sha256(b"the champion's weights").hexdigest()
    with scoring.pinned_model(path, pinned) as copy:
        path.write_bytes(b"swapped in after the request")  # what is scored stays the resolved file
        assert copy.read_bytes() == b"the champion's weights" and verify_digest(copy)
    with pytest.raises(ChecksumError, match=f"is not {pinned}, the model the request resolved"):
        with scoring.pinned_model(path, pinned):
            pass
