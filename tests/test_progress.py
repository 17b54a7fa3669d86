"""Progress: log lines where there is no terminal, each step counted once, the figures computed lazily."""
from __future__ import annotations

import logging

import pytest

from faceattr.progress import Progress, duration


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "faceattr.progress"]


def test_log_lines_show_counts_rate_figures_and_eta(caplog, monkeypatch):
    clock = iter([100.0, 110.0, 120.0, 130.0])  # start, then one reading per update
    monkeypatch.setattr("faceattr.progress.time.perf_counter", lambda: next(clock))
    calls = []
    with caplog.at_level(logging.INFO, logger="faceattr.progress"):
        progress = Progress(300, "epoch 1", log_every_s=15.0, tty=False)
        progress.update(100, lambda: calls.append(1) or {"loss": 0.5})  # 10 s: too soon for a line
        progress.update(100, lambda: {"loss": 0.25})  # 20 s
        progress.update(100, lambda: {"loss": 0.125})  # 30 s, and the last one: always shown
        progress.close()
    assert calls == []  # a figure nobody sees is never computed
    assert _lines(caplog) == ["epoch 1: 200/300 img (67%), 10.0 img/s, loss 0.2500, ETA 0:10",
                              "epoch 1: 300/300 img (100%), 10.0 img/s, loss 0.1250, ETA 0:00"]


def test_bytes_in_mib_and_a_last_line_on_leaving(caplog):
    with caplog.at_level(logging.INFO, logger="faceattr.progress"):
        with Progress(None, "download x", unit="B", log_every_s=3600, tty=False) as progress:
            progress.update(3 * 2**20)
    (line,) = _lines(caplog)
    assert line.startswith("download x: 3.0/? MiB, ") and line.endswith(" MiB/s, ETA ?")


def test_no_line_when_disabled_or_after_an_error(caplog):
    with caplog.at_level(logging.INFO, logger="faceattr.progress"):
        with Progress(10, "verify", enabled=False, tty=False) as progress:
            progress.update(10)
        with pytest.raises(KeyError), Progress(10, "copy", log_every_s=3600, tty=False) as progress:
            progress.update(1)
            raise KeyError("stop")
    assert _lines(caplog) == []


@pytest.mark.parametrize("seconds, text", [(float("nan"), "?"), (59.4, "0:59"), (61, "1:01"), (3 * 3600 + 5, "3:00:05")])
def test_duration(seconds, text):
    assert duration(seconds) == text
