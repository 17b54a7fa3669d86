"""faceattr bench: a tiny smoke run; the speed targets live in the benchmark itself, not here."""
from __future__ import annotations

import io
import json

import pytest
import torch

from faceattr.bench import SIZES, format_table, run_benchmark

torch.set_num_threads(2)
PARTS = ("data_path", "train", "score")


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
    table = "\n".join(lines[:-1])
    assert table == format_table(figures)
    for name in ("data path", "train epoch", "score JPEGs"):
        assert name in table


def test_bench_rejects_an_unknown_size():
    with pytest.raises(ValueError, match="size"):
        run_benchmark(size="huge", device="cpu", out=io.StringIO())
