"""The registry cannot be fooled (each refusal one line, nothing changed) and its gate compares
like with like: a run on new data is compared with the champion on the images the champion never saw."""
from __future__ import annotations

from pathlib import Path

import pytest

from faceattr.run.config import ConfigError
from faceattr.run.layout import RunLayout
from faceattr.store import registry
from faceattr.store.registry import RegistryError
from faceattr.store.store import Store
from published_runs import data_root as _data_root, retest, tested_run as _tested_run, write_model_file


# -- a registry that cannot be fooled ------------------------------------------------------------
def _snapshot(store: Store) -> tuple:
    """Everything a refused publish must leave as it was."""
    return ([(m["run_id"], m["state"], m["reason"], m["sha256"], m["path"]) for m in registry.candidates(store)],
            store.count("model_events"), [(r["id"], r["run_dir"]) for r in store.runs()])


def test_another_folder_under_a_published_run_id_is_refused(store, tmp_path):
    root = _data_root(tmp_path)
    registry.publish(store, _tested_run(tmp_path, "r", 0.80, root=root), actor="t")
    before = _snapshot(store)
    elsewhere = _tested_run(tmp_path / "copy", "r", 0.95, root=root)
    with pytest.raises(RegistryError, match=r"run 'r' is already recorded with the folder .*; refusing to publish") \
            as refused:
        registry.publish(store, elsewhere, actor="t")
    assert "\n" not in str(refused.value)
    assert _snapshot(store) == before


@pytest.mark.parametrize("change, words", [
    ({"run": "other"}, "run 'other', expected 'r'"),
    ({"epoch": 1}, "epoch 1, expected 2"),
    ({"arch": "resnet18"}, "arch 'resnet18', expected 'resnext50_32x4d'"),
])
def test_a_model_file_that_is_not_the_runs_is_refused(store, tmp_path, change, words):
    root = _data_root(tmp_path)
    run_dir = _tested_run(tmp_path, "r", 0.80, root=root)
    write_model_file(run_dir, **{"run": "r", "epoch": 2, **change})
    retest(run_dir)  # even with test metrics measured on it
    with pytest.raises(RegistryError, match="not this run's selected model") as refused:
        registry.publish(store, run_dir, actor="t")
    assert words in str(refused.value) and "re-run 'faceattr select" in str(refused.value)
    assert registry.candidates(store) == []


def test_a_swapped_champion_is_refused_everywhere_and_republishing_does_not_bless_it(store, tmp_path):
    root = _data_root(tmp_path)
    run_dir = _tested_run(tmp_path, "r", 0.80, root=root)
    registry.publish(store, run_dir, actor="t")
    write_model_file(run_dir, "r", fill=1.0)  # other weights, same run, arch and epoch, its own digest
    for name in ("champion", "r"):
        with pytest.raises(RegistryError, match="has changed since run r epoch 2 was published") as refused:
            registry.resolve(store, name)
        assert "re-run 'faceattr select" in str(refused.value) and "publish" not in str(refused.value).split(";")[-1]
    before = _snapshot(store)
    with pytest.raises(RegistryError, match="not the model its test metrics measured"):
        registry.publish(store, run_dir, actor="t")
    assert _snapshot(store) == before
    retest(run_dir)  # what the message says: select and test again; then the new file is published
    assert registry.publish(store, run_dir, actor="t")["state"] == "champion"
    assert registry.resolve(store, "champion")["path"] == str(RunLayout(run_dir).model.resolve())


def test_test_metrics_changed_after_test_are_refused(store, tmp_path):
    import json

    root = _data_root(tmp_path)
    registry.publish(store, _tested_run(tmp_path, "champ", 0.80, root=root), actor="t")
    run_dir = _tested_run(tmp_path, "forged", 0.70, root=root)
    path = RunLayout(run_dir).metrics("test", 2)
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "mean_accuracy": 0.99}))
    before = _snapshot(store)
    with pytest.raises(RegistryError, match="test_epoch_2.json: sha256 .* does not match"):
        registry.publish(store, run_dir, actor="t")
    (path.parent / "test_epoch_2.json.sha256").unlink()
    with pytest.raises(RegistryError, match="has no test_epoch_2.json.sha256"):
        registry.publish(store, run_dir, actor="t")
    assert _snapshot(store) == before


# -- another evaluation set: both models on the images the champion never saw --------------------
def _new_data_run(tmp_path: Path, name: str, test: float, test_ids: tuple[str, ...]) -> Path:
    """A run on next week's data: another label file, so another evaluation set."""
    return _tested_run(tmp_path, name, test, root=_data_root(tmp_path, f"data-{name}", labels="3\nnew labels\n"),
                       test_ids=test_ids, train_ids=("20.jpg", "21.jpg"))


def _rescore(figures: dict[str, float], calls: list):
    def rescore(model_path: Path, run_dir: Path, image_ids: list[str]) -> float:
        calls.append((model_path.parent.name, run_dir.name, list(image_ids)))
        return figures[model_path.parent.name]
    return rescore


def test_new_data_is_compared_on_the_images_the_champion_never_saw(store, tmp_path):
    root = _data_root(tmp_path)
    registry.publish(store, _tested_run(tmp_path, "champ", 0.80, root=root), actor="t")  # trained on 1.jpg, 2.jpg
    calls: list = []
    better = _new_data_run(tmp_path, "better", 0.70, ("1.jpg", "5.jpg", "6.jpg", "7.jpg"))
    result = registry.publish(store, better, actor="t", min_images=3,
                              rescore=_rescore({"champ": 0.75, "better": 0.81}, calls))
    assert calls == [("better", "better", ["5.jpg", "6.jpg", "7.jpg"]), ("champ", "better", ["5.jpg", "6.jpg", "7.jpg"])]
    assert result["promoted"] and result["reason"].startswith("beats run champ: mean accuracy on 3 shared test images "
                                                              "0.8100 vs 0.7500 (gain +0.0600)"), result["reason"]
    assert result["comparison"]["images"] == 3
    assert (result["comparison"]["challenger"], result["comparison"]["champion"]) == (0.81, 0.75)
    event = registry.history(store, 1)[0]
    assert event["state"] == "champion" and event["comparison"]["rule"].startswith("mean accuracy of both models")

    worse = _new_data_run(tmp_path, "worse", 0.95, ("8.jpg", "9.jpg", "10.jpg"))
    held = registry.publish(store, worse, actor="t", min_images=3,
                            rescore=_rescore({"better": 0.81, "worse": 0.60}, []))
    assert held["state"] == "challenger" and "does not beat champion run better: mean accuracy on 3 shared test " \
        "images 0.6000 vs 0.8100" in held["reason"]
    assert registry.champion(store)["run_id"] == "better"


def test_too_few_unseen_images_leave_the_run_a_challenger(store, tmp_path):
    root = _data_root(tmp_path)
    registry.publish(store, _tested_run(tmp_path, "champ", 0.80, root=root), actor="t")
    run_dir = _new_data_run(tmp_path, "new", 0.90, ("1.jpg", "2.jpg", "5.jpg"))
    calls: list = []
    held = registry.publish(store, run_dir, actor="t", min_images=2, rescore=_rescore({}, calls))
    assert held["state"] == "challenger" and calls == []
    assert "only 1 of this run's test images are unseen by the champion (gate_min_images 2)" in held["reason"]
    assert held["comparison"]["images"] == 1
    with pytest.raises(ConfigError, match="gate_min_images"):
        registry.publish(store, run_dir, actor="t", min_images=0)


def test_promote_and_rollback_record_that_nothing_was_compared(store, tmp_path):
    root = _data_root(tmp_path)
    registry.publish(store, _tested_run(tmp_path, "one", 0.80, root=root), actor="t")
    registry.publish(store, _tested_run(tmp_path, "two", 0.70, root=root), actor="t")
    registry.promote(store, "two", actor="me")
    assert registry.history(store, 1)[0]["comparison"] == {"rule": "changed by hand: no comparison was made"}
    registry.rollback(store, actor="me")
    assert registry.history(store, 1)[0]["comparison"] == {"rule": "changed by hand: no comparison was made"}


def test_a_champion_changed_since_publishing_is_not_rescored(store, tmp_path):
    root = _data_root(tmp_path)
    champ = _tested_run(tmp_path, "champ", 0.80, root=root)
    registry.publish(store, champ, actor="t")
    write_model_file(champ, "champ", fill=3.0)
    calls: list = []
    held = registry.publish(store, _new_data_run(tmp_path, "new", 0.9, ("5.jpg", "6.jpg")), actor="t", min_images=1,
                            rescore=_rescore({}, calls))
    assert held["state"] == "challenger" and calls == []
    assert "is missing or changed since it was published: re-run select and test for run champ" in held["reason"]
