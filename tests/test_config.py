"""RunConfig: validation names the field, JSON round trip, resume checks, JSON schema."""
from __future__ import annotations

import json

import pytest

from faceattr.config import ConfigError, RunConfig, save_or_check


def test_defaults_are_the_write_up_recipe():
    config = RunConfig()
    assert (config.arch, config.freeze_children, config.loss, config.optimizer, config.epochs) == (
        "resnext50_32x4d", 6, "mse", "adamax", 12,
    )
    # The write-up weighs every label alike and keeps the BatchNorm statistics gathered in training.
    assert (config.pos_weight, config.recalibrate_bn, config.tune_thresholds) == ("none", 0, False)


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("epochs", 0, "epochs: 0 is below the minimum 1"),
        ("lr", -0.1, "lr: -0.1 must be greater than 0"),
        ("loss", "l1", "loss: 'l1' is not one of mse, bce"),
        ("batch_size", "64", "batch_size: expected int"),
        ("tune_thresholds", 1, "tune_thresholds: expected bool"),
        ("pos_weight", "half", "pos_weight: 'half' is not one of none, sqrt, full"),
        ("recalibrate_bn", -1, "recalibrate_bn: -1 is below the minimum 0"),
        ("device", "tpu", "device: 'tpu'"),
    ],
)
def test_bad_values_name_the_field(field, value, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(")):
        RunConfig.from_dict({field: value})


def test_unknown_field_is_refused():
    with pytest.raises(ConfigError, match="unknown field.*epoch_count"):
        RunConfig.from_dict({"epoch_count": 3})


def test_round_trip_and_corrupt_file(tmp_path):
    config = RunConfig(arch="resnet18", lr=0.01, compile=False)
    config.save(tmp_path)
    assert RunConfig.load(tmp_path) == config
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="config.json: not valid JSON"):
        RunConfig.load(tmp_path)


def test_resume_allows_execution_changes_only(tmp_path):
    save_or_check(RunConfig(lr=0.01), tmp_path)
    save_or_check(RunConfig(lr=0.01, device="cpu", epochs=20), tmp_path)  # where/how long: fine
    with pytest.raises(ConfigError, match="lr: saved 0.01, now 0.02"):
        save_or_check(RunConfig(lr=0.02), tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["epochs"] == 20


def test_json_schema_matches_validation():
    schema = RunConfig.json_schema()
    assert schema["epochs"] == {"type": "integer", "minimum": 1, "maximum": 1000}
    assert schema["loss"]["enum"] == ["mse", "bce"]
    assert schema["lr"]["exclusiveMinimum"] == 0.0
    assert schema["compile"]["type"] == ["boolean", "null"]
