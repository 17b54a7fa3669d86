"""RunConfig: validation names the field, JSON round trip, resume checks, JSON schema."""
from __future__ import annotations

import json
import math
from dataclasses import fields

import jsonschema
import pytest

from faceattr.run.config import ConfigError, RunConfig, save_or_check


def test_defaults_are_the_write_up_recipe():
    config = RunConfig()
    assert (config.arch, config.weights, config.freeze_children, config.loss, config.optimizer, config.epochs) == (
        "resnext50_32x4d", "imagenet", 6, "mse", "adamax", 12,
    )
    # The write-up weighs every label alike and keeps the BatchNorm statistics gathered in training.
    assert (config.pos_weight, config.recalibrate_bn, config.tune_thresholds) == ("none", 0, False)


@pytest.mark.parametrize("name, weights, explicit, resolved", [
    # what the weights allow
    ("freeze_children", "imagenet", None, 6), ("freeze_children", "/models/start.pt", None, 6),
    ("freeze_children", "none", None, 0),
    ("recalibrate_bn", "imagenet", None, 0), ("recalibrate_bn", "/models/start.pt", None, 0),
    ("recalibrate_bn", "none", None, 1024),
    # the user's choice stands
    ("freeze_children", "none", 3, 3), ("freeze_children", "imagenet", 0, 0), ("freeze_children", "none", 0, 0),
    ("recalibrate_bn", "none", 0, 0), ("recalibrate_bn", "imagenet", 200, 200),
])
def test_weight_dependent_defaults_follow_the_weights_unless_set(name, weights, explicit, resolved, tmp_path):
    values = {"weights": weights} if explicit is None else {"weights": weights, name: explicit}
    config = RunConfig.from_dict(values)
    assert getattr(config, name) == resolved
    # config.json records the number that ran, so a later change of the default cannot change a run.
    config.save(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())[name] == resolved
    assert RunConfig.load(tmp_path) == config
    # Replacing the weights (as resuming from a checkpoint does) keeps the resolved number.
    assert getattr(config.replace(weights="none"), name) == resolved


def test_old_run_config_keeps_its_saved_freeze_value(tmp_path):
    old = {**RunConfig().to_dict(), "weights": "none", "freeze_children": 6}  # written before the default followed the weights
    (tmp_path / "config.json").write_text(json.dumps(old))
    assert RunConfig.load(tmp_path).freeze_children == 6
    save_or_check(RunConfig.from_dict(old), tmp_path)  # resuming it is no configuration change


@pytest.mark.parametrize("name", [f.name for f in fields(RunConfig) if "float" in str(f.type)])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_refused(name, value):
    with pytest.raises(ConfigError, match=rf"^config: {name}: {value!r} is not a finite number"):
        RunConfig.from_dict({name: value})


def test_nan_in_a_saved_config_names_the_file_and_field(tmp_path):
    (tmp_path / "config.json").write_text('{"lr": NaN}')  # what json.dumps writes for float("nan")
    with pytest.raises(ConfigError, match=r"config.json: lr: nan is not a finite number"):
        RunConfig.load(tmp_path)


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
        ("device", "tpu", "device: 'tpu' is not one of auto, cpu, cuda or cuda:N"),
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
    (tmp_path / "split.csv").write_text("image_id,split\na.jpg,train\n")  # the run has started
    save_or_check(RunConfig(lr=0.01, device="cpu", epochs=20), tmp_path)  # where/how long: fine
    with pytest.raises(ConfigError, match="lr: saved 0.01, now 0.02"):
        save_or_check(RunConfig(lr=0.02), tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["epochs"] == 20


def test_a_folder_without_a_split_or_an_epoch_takes_a_corrected_config(tmp_path):
    save_or_check(RunConfig(arch="nosuch"), tmp_path)  # what a failed start left
    save_or_check(RunConfig(arch="resnet18"), tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["arch"] == "resnet18"
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "epoch_1.pt").write_bytes(b"")  # an epoch, even without a split: started
    with pytest.raises(ConfigError, match="arch: saved 'resnet18', now 'resnet34'"):
        save_or_check(RunConfig(arch="resnet34"), tmp_path)


def test_a_seed_past_what_sklearn_takes_is_refused_naming_seed():
    with pytest.raises(ConfigError, match="seed: 4294967296 is above the maximum 4294967295"):
        RunConfig(seed=2**32)


# -- the trigger form's schema and the library's validation agree at every boundary -------------
# Values of each JSON type (no whole floats: JSON schema counts 1.0 as an integer, Python does not).
PROBES = [None, True, False, -1, 0, 1, 2, 1.5, -0.5, "", "x", "auto", "cpu", "cuda", "cuda:0", "cuda:12",
          "cuda:", "cuda:x", " cpu", "CPU", [], {}]


def _boundary_probes(schema: dict) -> list:
    """Values on and just beyond each bound, each choice and one near miss, from the schema alone."""
    integer = "integer" in schema["type"]
    step = 1 if integer else 1e-9
    probes = []
    for key, inside, outside in (("minimum", 0, -step), ("maximum", 0, step), ("exclusiveMinimum", step, 0)):
        if key in schema:
            bound = schema[key]
            probes += [bound + inside, bound + outside]
            if not integer:  # a float field takes integers too
                probes += [int(bound) - 1, int(bound) + 1]
    for choice in schema.get("enum", []):
        probes += [choice, choice.upper(), choice + " "]
    return probes


def _accepted(name: str, value) -> bool:
    try:
        RunConfig(**{name: value})  # not from_dict, which also reads pos_weight's old true/false
    except ConfigError as exc:
        assert str(exc).startswith(f"{name}: "), f"{name}={value!r}: the message names another field: {exc}"
        return False
    return True


@pytest.mark.parametrize("name", [f.name for f in fields(RunConfig)])
def test_json_schema_matches_validation_at_every_boundary(name):
    schema = RunConfig.json_schema()[name]
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    disagreements = [
        (value, validator.is_valid(value), accepted)
        for value in PROBES + _boundary_probes(schema)
        if validator.is_valid(value) != (accepted := _accepted(name, value))
    ]
    assert not disagreements, f"{name}: (value, schema valid, RunConfig accepts): {disagreements}"
    assert validator.is_valid(RunConfig.declared_defaults()[name])


def test_every_bound_is_in_the_schema():
    """Each check RunConfig makes from a field's metadata shows in its schema, so the probes above cover it."""
    keys = {"min": "minimum", "max": "maximum", "exclusive_min": "exclusiveMinimum", "choices": "enum",
            "pattern": "pattern"}
    schema = RunConfig.json_schema()
    for f in fields(RunConfig):
        for key in set(f.metadata) & set(keys):
            assert keys[key] in schema[f.name], (f.name, key)
