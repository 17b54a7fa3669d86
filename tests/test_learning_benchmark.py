"""benchmarks/learning.py's verdict: the mean gain and every drawn attribute above its baseline."""
from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

from faceattr.attributes import ATTRIBUTES
from faceattr.synth.drawing import DRAWN_ATTRIBUTES

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "learning.py"


@pytest.fixture(scope="module")
def learning():
    spec = importlib.util.spec_from_file_location("learning_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _test_metrics(accuracy: dict[str, float], baseline: dict[str, float]) -> dict:
    rows = {name: {"accuracy": accuracy.get(name, 0.96), "majority_baseline": baseline.get(name, 0.9)}
            for name in ATTRIBUTES}
    mean = sum(row["accuracy"] for row in rows.values()) / len(rows)
    base = sum(row["majority_baseline"] for row in rows.values()) / len(rows)
    return {"mean_accuracy": mean, "majority_baseline": base, "images": 200, "attributes": rows}


def _verdict(learning, test: dict, capsys) -> tuple[int, str]:
    args = argparse.Namespace(celeba=None, images=2000, seed=0, split="random", epochs=3, min_gain=5.0)
    summary = {"best_epoch": 3, "val_mean_accuracy": 0.9}
    code = learning.report(test, summary, 1.0, args)
    return code, capsys.readouterr().out


def test_every_drawn_attribute_above_its_baseline_passes(learning, capsys):
    code, out = _verdict(learning, _test_metrics({}, {}), capsys)
    assert code == 0 and "verdict: PASS" in out


def test_a_drawn_attribute_at_its_baseline_fails(learning, capsys):
    name = DRAWN_ATTRIBUTES[0]
    code, out = _verdict(learning, _test_metrics({name: 0.9}, {}), capsys)
    assert code == 1 and f"not above their baseline: {name}" in out


def test_an_attribute_with_one_class_in_test_is_listed_not_failed(learning, capsys):
    # All 200 test images negative: a perfect model only ties the baseline of 1.
    name = DRAWN_ATTRIBUTES[0]
    code, out = _verdict(learning, _test_metrics({name: 1.0}, {name: 1.0}), capsys)
    assert code == 0, out
    assert f"holds one class only): {name}" in out and "not above their baseline: none" in out


def test_a_small_mean_gain_fails(learning, capsys):
    # Every attribute above its baseline, but by 3 points on average: under --min-gain 5.
    test = _test_metrics({name: 0.93 for name in ATTRIBUTES}, {})
    code, out = _verdict(learning, test, capsys)
    assert code == 1 and "verdict: FAIL" in out
