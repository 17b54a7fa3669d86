"""faceattr bench: a tiny smoke run; the speed targets live in the benchmark itself, not here."""
from __future__ import annotations

import io
import json
import re

import pytest

from faceattr.bench import SIZES, run_benchmark

PARTS = {"data_path": "data path (img/s)", "train": "train epoch (img/s)", "score": "score JPEGs (img/s)"}


def test_bench_measures_both_recipes_and_prints_table_and_json():
    out = io.StringIO()
    figures = run_benchmark(size="tiny", device="cpu", out=out)
    for part in PARTS:
        for key in (f"{part}.writeup_img_s", f"{part}.fast_img_s", f"{part}.ratio"):
            assert isinstance(figures[key], float) and figures[key] > 0, key
        assert figures[f"{part}.ratio"] == pytest.approx(
            figures[f"{part}.fast_img_s"] / figures[f"{part}.writeup_img_s"], rel=0.02)
    assert figures["cache.build_img_s"] > 0 and figures["train.fast_warmup_s"] >= 0
    assert figures["train.fast_compiled"] is False  # CPU: compile is off by default
    assert figures["images"] == SIZES["tiny"].images and figures["device"] == "cpu"

    lines = out.getvalue().strip().splitlines()
    assert json.loads(lines[-1]) == figures  # one JSON line, last
    # Each row reads back as the figures it shows: write-up img/s, faceattr img/s, ratio.
    for part, name in PARTS.items():
        (row,) = [line for line in lines[:-1] if line.startswith(name)]
        numbers = re.fullmatch(re.escape(name) + r" +([\d.]+) +([\d.]+) +([\d.]+)x", row)
        assert numbers, row
        writeup, fast, ratio = map(float, numbers.groups())
        assert writeup == pytest.approx(figures[f"{part}.writeup_img_s"], abs=0.05), row
        assert fast == pytest.approx(figures[f"{part}.fast_img_s"], abs=0.05), row
        assert ratio == pytest.approx(figures[f"{part}.ratio"], abs=0.005), row
    assert any(line.startswith(f"cache build: {SIZES['tiny'].images} images in ") for line in lines)


def test_bench_rejects_an_unknown_size():
    with pytest.raises(ValueError, match="size"):
        run_benchmark(size="huge", device="cpu", out=io.StringIO())
