"""faceattr.run.metrics: the one reader/writer of RUN/metrics/ and RUN/best.json."""
import hashlib
import json

import pytest

from faceattr.fsutil import ChecksumError
from faceattr.run import metrics
from faceattr.run.metrics import read_test_metrics, write_best, write_epoch_metrics
from faceattr.run.layout import RunLayout, parse_metrics_name


def test_write_then_read_round_trips_and_stamps_epoch_and_split(tmp_path):
    path = metrics.write_epoch_metrics(tmp_path, "val", 3, {"mean_accuracy": 0.8})
    assert path == RunLayout(tmp_path).metrics("val", 3)
    assert json.loads(path.read_text()) == {"epoch": 3, "split": "val", "mean_accuracy": 0.8}
    assert metrics.read_epoch_metrics(tmp_path, "val", 3)["mean_accuracy"] == 0.8
    assert metrics.read_epoch_metrics(tmp_path, "test", 3, missing_ok=True) is None
    with pytest.raises(FileNotFoundError, match="test_epoch_3.json"):
        metrics.read_epoch_metrics(tmp_path, "test", 3)


@pytest.mark.parametrize("split, epoch, message", [("dev", 1, "split"), ("val", 0, "epoch"), ("val", True, "epoch"),
                                                   ("val", "2", "epoch")])
def test_bad_split_or_epoch_is_refused(tmp_path, split, epoch, message):
    with pytest.raises(ValueError, match=message):
        metrics.write_epoch_metrics(tmp_path, split, epoch, {})


def test_data_contradicting_the_file_name_is_refused(tmp_path):
    with pytest.raises(ValueError, match="epoch 2"):
        metrics.write_epoch_metrics(tmp_path, "val", 1, {"epoch": 2})
    # A file copied under another epoch's name.
    path = metrics.write_epoch_metrics(tmp_path, "val", 1, {"mean_accuracy": 0.5})
    path.rename(path.with_name("val_epoch_2.json"))
    with pytest.raises(ValueError, match=r"val_epoch_2.json: field 'epoch' is 1, but the file name says 2"):
        metrics.all_epoch_metrics(tmp_path)


def test_all_epoch_metrics_groups_by_split_and_skips_other_files(tmp_path):
    for split, epoch in (("train", 2), ("train", 10), ("val", 1), ("test", 2)):
        metrics.write_epoch_metrics(tmp_path, split, epoch, {"x": epoch})
    folder = RunLayout(tmp_path).metrics_dir
    (folder / ".val_epoch_4.json.tmp-abc").write_text("{")  # an interrupted write
    (folder / "val_epoch_1.npz").write_bytes(b"")
    (folder / "notes.json").write_text("[]")
    found = metrics.all_epoch_metrics(tmp_path)
    assert {split: list(by_epoch) for split, by_epoch in found.items()} == {"train": [2, 10], "val": [1], "test": [2]}
    assert found["train"][10]["x"] == 10


def test_all_epoch_metrics_of_a_run_without_metrics_is_empty(tmp_path):
    assert metrics.all_epoch_metrics(tmp_path) == {"train": {}, "val": {}, "test": {}}


@pytest.mark.parametrize("name, parsed", [("val_epoch_3.json", ("val", 3)), ("train_epoch_12.json", ("train", 12)),
                                          ("val_epoch_3.npz", None), ("dev_epoch_1.json", None),
                                          ("val_epoch_x.json", None), (".val_epoch_3.json.tmp-1", None)])
def test_parse_metrics_name(name, parsed):
    assert parse_metrics_name(name) == parsed


def test_best_round_trip_and_checks(tmp_path):
    assert metrics.read_best(tmp_path) is None
    with pytest.raises(FileNotFoundError):
        metrics.read_best(tmp_path, missing_ok=False)
    metrics.write_best(tmp_path, {"epoch": 2, "val_mean_accuracy": 0.9, "val_by_epoch": {"1": 0.8, "2": 0.9}})
    assert metrics.read_best(tmp_path)["epoch"] == 2
    with pytest.raises(ValueError, match="val_mean_accuracy"):
        metrics.write_best(tmp_path, {"epoch": 2, "val_mean_accuracy": float("nan")})
    RunLayout(tmp_path).best.write_text('{"epoch": 0, "val_mean_accuracy": 0.5}')
    with pytest.raises(ValueError, match=r"best.json: epoch"):
        metrics.read_best(tmp_path)


def test_scores_path_is_beside_the_metrics(tmp_path):
    assert metrics.scores_path(tmp_path, "val", 4) == RunLayout(tmp_path).metrics_dir / "val_epoch_4.npz"


def test_test_metrics_carry_a_digest_and_the_tested_models_sha256(tmp_path):
    layout = RunLayout(tmp_path)
    layout.model.parent.mkdir(parents=True, exist_ok=True)
    layout.model.write_bytes(b"epoch 2's model")
    write_best(tmp_path, {"epoch": 2, "val_mean_accuracy": 0.8})
    write_epoch_metrics(tmp_path, "test", 2, {"mean_accuracy": 0.7})
    write_epoch_metrics(tmp_path, "test", 1, {"mean_accuracy": 0.6})  # not the selected epoch: no model named
    assert read_test_metrics(tmp_path, 2)["model_sha256"] == hashlib.sha256(b"epoch 2's model").hexdigest()
    assert read_test_metrics(tmp_path, 1)["model_sha256"] is None
    path = layout.metrics("test", 2)
    path.write_text(path.read_text().replace("0.7", "0.9"))
    with pytest.raises(ChecksumError, match="test_epoch_2.json: sha256 .* does not match"):
        read_test_metrics(tmp_path, 2)
    path.with_name(path.name + ".sha256").unlink()
    with pytest.raises(ChecksumError, match="has no test_epoch_2.json.sha256"):
        read_test_metrics(tmp_path, 2)
    write_epoch_metrics(tmp_path, "val", 2, {"mean_accuracy": 0.8})  # validation metrics: no digest
    assert not layout.metrics("val", 2).with_name("val_epoch_2.json.sha256").exists()
