"""The model registry: the publish gate, promote, rollback and a race of two publishes."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError

from faceattr.run.config import RunConfig
from faceattr.run.layout import RunLayout
from faceattr.store import registry
from faceattr.store.registry import RegistryError
from faceattr.store.store import Store
from faceattr.views import format_models
from published_runs import data_root as _data_root, retest, tested_run as _tested_run


def _states(store: Store) -> dict[str, str]:
    return {m["run_id"]: m["state"] for m in registry.candidates(store)}


def test_first_model_is_champion_a_worse_one_stays_challenger(store, tmp_path):
    root = _data_root(tmp_path)
    good = registry.publish(store, _tested_run(tmp_path, "good", 0.8681, root=root), actor="t")
    assert (good["state"], good["promoted"], good["reason"]) == ("champion", True, "first published model")
    worse = registry.publish(store, _tested_run(tmp_path, "worse", 0.8469, root=root), actor="t")
    assert (worse["state"], worse["promoted"]) == ("challenger", False)
    assert "does not beat champion run good" in worse["reason"] and "0.8469 vs 0.8681" in worse["reason"]
    assert registry.resolve(store, "champion")["run_id"] == "good"
    assert registry.resolve(store, "latest")["run_id"] == "good"
    assert registry.resolve(store, "worse")["path"].endswith("worse/model.pt")
    listing = format_models(store)
    assert listing.splitlines()[2].split()[:2] == ["champion", "good"]
    assert "does not beat champion run good" in listing

    better = registry.publish(store, _tested_run(tmp_path, "better", 0.87, root=root), actor="t")
    assert (better["state"], better["promoted"]) == ("champion", True)
    assert better["previous_champion"]["run_id"] == "good"
    assert _states(store) == {"better": "champion", "good": "retired", "worse": "challenger"}


def test_min_gain_ties_and_retries(store, tmp_path):
    root = _data_root(tmp_path)
    registry.publish(store, _tested_run(tmp_path, "a", 0.85, root=root), actor="t")
    tie = registry.publish(store, _tested_run(tmp_path, "tie", 0.85, root=root), actor="t")
    assert tie["state"] == "challenger"  # a tie is no gain
    small = registry.publish(store, _tested_run(tmp_path, "small", 0.855, root=root), min_gain=0.01, actor="t")
    assert small["state"] == "challenger" and "at least 0.01" in small["reason"]
    big = registry.publish(store, _tested_run(tmp_path, "big", 0.87, root=root), min_gain=0.01, actor="dag-1")
    assert big["state"] == "champion"
    events = len(registry.history(store, 100))
    # A retry of the same publish reports the same outcome (the asset event must fire again) and writes nothing.
    again = registry.publish(store, tmp_path / "big", min_gain=0.01, actor="dag-1")
    assert (again["state"], again["promoted"]) == ("champion", True)
    assert len(registry.history(store, 100)) == events
    # Published again after the champion changed, a challenger is judged against the new one.
    assert "champion run big" in registry.publish(store, tmp_path / "tie", actor="t")["reason"]
    for bad in (-0.1, float("nan"), 2):
        with pytest.raises(ValueError, match="promote_min_gain"):
            registry.publish(store, tmp_path / "big", min_gain=bad, actor="t")


@pytest.mark.parametrize("change, words", [({"seed": 1}, "seed 1 vs 0"), ({"split": "identity"}, "split strategy"),
                                           ({"data": "3\nother labels\n"}, "source data sha256"),
                                           ({"test_ids": ("3.jpg", "5.jpg")}, "test images sha256")])
def test_other_evaluation_sets_are_not_compared_unless_forced(store, tmp_path, change, words):
    registry.publish(store, _tested_run(tmp_path, "champ", 0.80, root=_data_root(tmp_path)), actor="t")
    root = _data_root(tmp_path, "other", change["data"]) if "data" in change else _data_root(tmp_path)
    kwargs = {k: v for k, v in change.items() if k != "data"}
    run_dir = _tested_run(tmp_path, "other", 0.95, root=root, **kwargs)
    held = registry.publish(store, run_dir, actor="t")
    assert held["state"] == "challenger" and "not compared" in held["reason"] and words in held["reason"]
    forced = registry.publish(store, run_dir, force=True, actor="t")
    assert (forced["state"], forced["promoted"]) == ("champion", True) and "forced" in forced["reason"]


def test_the_seed_does_not_matter_for_the_official_split(store, tmp_path):
    root = _data_root(tmp_path)
    registry.publish(store, _tested_run(tmp_path, "champ", 0.80, root=root, split="official"), actor="t")
    better = registry.publish(store, _tested_run(tmp_path, "seed1", 0.85, root=root, split="official", seed=1),
                              actor="t")
    assert better["promoted"], better["reason"]


def test_a_champion_without_an_evaluation_set_gets_one_and_can_be_beaten(store, tmp_path):
    """A migrated or hand-promoted champion has eval_set NULL: publish fills it from its run folder."""
    from sqlalchemy import text

    root = _data_root(tmp_path)
    registry.publish(store, _tested_run(tmp_path, "champ", 0.80, root=root), actor="t")
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE models SET eval_set = NULL"))
    better = registry.publish(store, _tested_run(tmp_path, "better", 0.85, root=root), actor="t")
    assert better["promoted"], better["reason"]
    assert {m["run_id"]: m["eval_set"]["test_ids_sha256"] is not None for m in registry.candidates(store)} == \
        {"champ": True, "better": True}


def test_unreadable_source_data_is_never_compared(store, tmp_path):
    root = _data_root(tmp_path)
    registry.publish(store, _tested_run(tmp_path, "champ", 0.80, root=root), actor="t")
    run_dir = _tested_run(tmp_path, "elsewhere", 0.95, root=tmp_path / "missing-root")
    result = registry.publish(store, run_dir, actor="t")
    assert result["state"] == "challenger" and "checksum is unknown" in result["reason"]


def test_publish_needs_a_tested_model(store, tmp_path):
    run_dir = _tested_run(tmp_path, "untested", 0.8, root=_data_root(tmp_path))
    RunLayout(run_dir).metrics("test", 2).unlink()
    with pytest.raises(FileNotFoundError, match="test_epoch_2.json: the selected epoch has no test metrics"):
        registry.publish(store, run_dir, actor="t")
    assert store.current_model() is None


def test_promote_and_rollback_by_hand(store, tmp_path):
    root = _data_root(tmp_path)
    with pytest.raises(RegistryError, match="no champion"):
        registry.rollback(store, actor="t")
    for name, test in (("one", 0.80), ("two", 0.82), ("three", 0.79)):
        registry.publish(store, _tested_run(tmp_path, name, test, root=root), actor="dag")
    assert registry.champion(store)["run_id"] == "two"

    promoted = registry.promote(store, "three", actor="alice")
    assert promoted["changed"] and promoted["message"] == "champion is now run three epoch 2 (was run two epoch 2)"
    assert registry.promote(store, "three", actor="alice")["changed"] is False
    assert _states(store) == {"three": "champion", "two": "retired", "one": "retired"}

    back = registry.rollback(store, actor="bob")
    assert back["message"] == "champion is now run two epoch 2 (rolled back from run three epoch 2)"
    champion = registry.champion(store)
    assert (champion["run_id"], champion["actor"]) == ("two", "bob") and "rolled back by bob" in champion["reason"]
    latest = registry.history(store, 2)
    assert [(e["run_id"], e["state"], e["actor"]) for e in latest] == [("two", "champion", "bob"),
                                                                      ("three", "retired", "bob")]
    with pytest.raises(RegistryError, match="run 'ghost': no model"):
        registry.promote(store, "ghost", actor="t")
    with pytest.raises(RegistryError, match="no published model of that run"):
        registry.resolve(store, "ghost")


def test_faceattr_models_publish_records_the_run_finished_like_the_dag(store, store_url, tmp_path, monkeypatch):
    """Both publish paths make one call: the run is recorded success and finished, whichever ran it."""
    from faceattr import cli

    run_dir = _tested_run(tmp_path, "by-hand", 0.8, root=_data_root(tmp_path))
    store.sync_run_dir("by-hand", run_dir, status="running")
    monkeypatch.setenv("FACEATTR_DB_URL", store_url)
    assert cli.main(["models", "publish", str(run_dir)]) == 0
    run = store.run("by-hand")
    assert run["status"] == "success" and run["finished_at"] is not None


def test_the_runs_model_is_best_json_epoch_for_store_registry_and_ui(store, tmp_path):
    """A stale row of an earlier selection (epoch 1, higher val) is never taken for the run's model."""
    from faceattr.ui import data

    run_dir = _tested_run(tmp_path, "r", 0.8, root=_data_root(tmp_path))
    store.sync_run_dir("r", run_dir)
    store.upsert_model("r", 1, run_dir / "model.pt", val_mean_accuracy=0.9, test_mean_accuracy=0.9)
    run = store.run("r")
    assert (run["best_epoch"], Store.selected_model(run)["epoch"], run["model"]["epoch"]) == (2, 2, 2)
    assert [r["best_epoch"] for r in store.runs()] == [2]
    assert data.selection(run, None, None)["winner"] == 2
    assert registry.promote(store, "r", actor="t")["champion"]["epoch"] == 2
    (run_dir / "best.json").unlink()  # folder not readable here: the newest published row
    assert store.run("r")["best_epoch"] == 2


def test_a_model_file_changed_since_its_publish_is_not_resolved(store, tmp_path):
    """Both epochs' rows point at RUN/model.pt: after the run is selected again, the old row must not resolve to it."""
    run_dir = _tested_run(tmp_path, "r", 0.8, root=_data_root(tmp_path))
    registry.publish(store, run_dir, actor="t")
    assert registry.resolve(store, "champion")["epoch"] == 2
    (run_dir / "model.pt").write_bytes(b"epoch 1's weights, exported by a later select")
    for name in ("champion", "r"):
        with pytest.raises(RegistryError, match="has changed since run r epoch 2 was published"):
            registry.resolve(store, name)


def test_rollback_steps_back_through_the_champions_in_order(store, tmp_path):
    """A, B, C promoted in turn: rollback gives B, the next A (not C again), then there is nothing left."""
    root = _data_root(tmp_path)
    for name, test in (("a", 0.80), ("b", 0.82), ("c", 0.84)):
        registry.publish(store, _tested_run(tmp_path, name, test, root=root), actor="dag")
    assert registry.rollback(store, actor="t")["champion"]["run_id"] == "b"
    assert registry.rollback(store, actor="t")["champion"]["run_id"] == "a"
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        registry.rollback(store, actor="t")
    registry.promote(store, "c", actor="t")  # a new promotion goes on top; rolling it back returns to a
    assert registry.rollback(store, actor="t")["champion"]["run_id"] == "a"
    assert registry.champion(store)["run_id"] == "a"


def test_scoring_jobs_keep_their_model_across_a_rollback(store, tmp_path):
    root = _data_root(tmp_path)
    registry.publish(store, _tested_run(tmp_path, "one", 0.80, root=root), actor="t")
    registry.publish(store, _tested_run(tmp_path, "two", 0.85, root=root), actor="t")
    store.upsert_scoring_job("job", model_run_id="two", model_epoch=2, status="success")
    registry.rollback(store, actor="t")
    job = store.scoring_job("job")
    assert (job["model_run_id"], job["model_epoch"]) == ("two", 2)


def test_the_database_refuses_a_second_champion(store, tmp_path):
    root = _data_root(tmp_path)
    registry.publish(store, _tested_run(tmp_path, "one", 0.80, root=root), actor="t")
    registry.publish(store, _tested_run(tmp_path, "two", 0.70, root=root), actor="t")
    from sqlalchemy import text

    with pytest.raises(IntegrityError):
        with store.engine.begin() as conn:
            conn.execute(text("UPDATE models SET is_current = :yes WHERE run_id = 'two'"), {"yes": True})


# -- two publishes racing ------------------------------------------------------------------------
def _race(store_url: str, runs: list[Path], monkeypatch) -> list:
    """Publish `runs` from two threads at once, each with its own connection; every transaction
    pauses after reading the champion, so without the lock both would decide on the same reading."""
    real = registry._champion

    def slow_champion(conn):
        found = real(conn)
        time.sleep(0.5)
        return found

    monkeypatch.setattr(registry, "_champion", slow_champion)
    results: list = [None, None]
    start = threading.Barrier(2)

    def publish(i: int) -> None:
        with Store(store_url) as own:
            start.wait()
            try:
                results[i] = registry.publish(own, runs[i], actor=f"dag-{i}")
            except Exception as exc:  # noqa: BLE001 - the outcome is what the test checks
                results[i] = exc

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


@pytest.mark.services
def test_two_publishes_racing_leave_one_champion(postgres_url, tmp_path, monkeypatch):
    root = _data_root(tmp_path)
    runs = [_tested_run(tmp_path, "slower", 0.80, root=root), _tested_run(tmp_path, "faster", 0.85, root=root)]
    Store(postgres_url).close()  # migrate first: the race is about publishing
    results = _race(postgres_url, runs, monkeypatch)
    assert all(isinstance(r, dict) for r in results), results
    with Store(postgres_url) as store:
        assert _states(store) == {"faster": "champion", "slower": "retired" if results[0]["promoted"] else "challenger"}
        assert sum(m["is_current"] for m in registry.candidates(store)) == 1


@pytest.mark.services
def test_without_the_lock_the_race_is_lost(postgres_url, tmp_path, monkeypatch):
    """Negative control: the same race with the advisory lock taken out makes one publish fail."""
    root = _data_root(tmp_path)
    runs = [_tested_run(tmp_path, "slower", 0.80, root=root), _tested_run(tmp_path, "faster", 0.85, root=root)]
    Store(postgres_url).close()
    monkeypatch.setattr(registry, "_lock", lambda conn: None)
    results = _race(postgres_url, runs, monkeypatch)
    assert any(isinstance(r, IntegrityError) for r in results), results


def test_published_run_ids_for_the_scoring_form(store, store_url, tmp_path):
    assert registry.published_run_ids(f"sqlite:///{tmp_path / 'absent.db'}") == []
    assert not (tmp_path / "absent.db").exists()  # parsing a DAG file creates no database
    assert registry.published_run_ids("postgresql+psycopg2://nobody@127.0.0.1:1/none") == []
    root = _data_root(tmp_path)
    registry.publish(store, _tested_run(tmp_path, "one", 0.80, root=root), actor="t")
    registry.publish(store, _tested_run(tmp_path, "two", 0.70, root=root), actor="t")
    assert registry.published_run_ids(store_url) == ["two", "one"]


def test_the_models_commands_and_predict_with_the_champion(store_url, tmp_path, monkeypatch, capsys):
    """Two runs on the same data, the second worse: the CLI keeps the first as champion, says why,
    and `faceattr predict --model champion` scores with it; promote and rollback say what changed."""
    import numpy as np
    from PIL import Image

    from faceattr.cli import main
    from faceattr.model import build_model, export_model

    monkeypatch.setenv("FACEATTR_DB_URL", store_url)
    monkeypatch.delenv("FACEATTR_DATA_ROOTS", raising=False)
    root = _data_root(tmp_path)
    runs = {name: _tested_run(tmp_path, name, test, root=root) for name, test in (("first", 0.8681), ("second", 0.8469))}
    for name, run_dir in runs.items():  # a real model file, so predict can use it
        config = RunConfig(arch="mobilenet_v3_small", weights="none", freeze_children=0)
        export_model(RunLayout(run_dir).model, build_model(config.arch, "none", 0).state_dict(), config, epoch=2,
                     thresholds=np.full(40, -10.0 if name == "first" else 10.0), run=str(run_dir), val_mean_accuracy=0.8)
        RunConfig.load(run_dir).replace(arch=config.arch).save(run_dir)
        retest(run_dir)
    for run_dir in runs.values():
        assert main(["models", "publish", str(run_dir)]) == 0
    printed = capsys.readouterr().out
    assert '"state": "champion"' in printed and '"state": "challenger"' in printed
    assert main(["models"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[2].split()[:2] == ["champion", "first"]
    assert "does not beat champion run first: test mean accuracy 0.8469 vs 0.8681" in listing[3]

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (178, 218), (120, 90, 60)).save(images / "face.jpg")
    assert main(["predict", "--model", "champion", "--images", str(images), "--out", str(tmp_path / "out.csv")]) == 0
    capsys.readouterr()
    row = (tmp_path / "out.csv").read_text().splitlines()[1].split(",")
    assert row[1:] == ["1"] * 40  # the first run's thresholds (-10): its model scored the image

    assert main(["models", "promote", "second"]) == 0
    assert capsys.readouterr().out.strip() == "champion is now run second epoch 2 (was run first epoch 2)"
    assert main(["models", "rollback"]) == 0
    assert capsys.readouterr().out.strip() == "champion is now run first epoch 2 (rolled back from run second epoch 2)"
    assert main(["models", "promote", "ghost"]) == 2
    assert "run 'ghost': no model recorded" in capsys.readouterr().err


def test_models_published_before_the_registry_keep_their_roles(store_url, tmp_path):
    """Migration 0002 on a store that already has models: the current one becomes champion."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine, text

    from faceattr.store.schema import MIGRATIONS_DIR

    engine = create_engine(store_url)
    with engine.begin() as conn:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        config.attributes["connection"] = conn
        command.upgrade(config, "0001")
        conn.execute(text("INSERT INTO runs (id, config, status, run_dir) VALUES ('old', '{}', 'success', '/r')"))
        for run_epoch, current in ((1, True), (2, False)):
            conn.execute(text("INSERT INTO models (run_id, epoch, path, val_mean_accuracy, published, is_current) "
                              "VALUES ('old', :epoch, '/r/model.pt', 0.8, :yes, :current)"),
                         {"epoch": run_epoch, "yes": True, "current": current})
    engine.dispose()
    with Store(store_url) as store:
        states = {m["epoch"]: (m["state"], m["reason"]) for m in registry.candidates(store)}
        assert states == {1: ("champion", "current model before the registry"),
                          2: ("challenger", "published before the registry")}
        assert registry.champion(store)["epoch"] == 1
