"""faceattr.settings: each FACEATTR_* variable is read when asked, with its default, and a bad value names it."""
from __future__ import annotations

from pathlib import Path

import pytest

from faceattr import settings

ALL = ("HOME", "DATA_ROOTS", "DB_URL", "ARTIFACTS", "WORLD_SIZE", "MAX_EPOCHS", "GPU_POOL", "GPU_QUEUE",
       "GPU_RETRY_DELAY_S", "TRAIN_SCHEDULE", "SOURCE", "STANDING_SET")


@pytest.fixture(autouse=True)
def clean(monkeypatch):
    for name in ALL:
        monkeypatch.delenv(getattr(settings, name), raising=False)


def test_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert settings.home() == tmp_path / "data"
    assert (settings.data_roots(), settings.db_url(), settings.artifacts()) == ("", None, None)
    assert (settings.world_size(), settings.max_epochs()) == (None, 12)
    assert (settings.gpu_pool(), settings.gpu_queue(), settings.gpu_retry_delay_s()) == ("gpu", "default", 60)
    assert (settings.train_schedule(), settings.source(), settings.standing_set()) == (None, None, None)


def test_values_are_read_when_asked(monkeypatch, tmp_path):
    values = {"HOME": str(tmp_path), "DB_URL": "sqlite:///x.db", "ARTIFACTS": "s3://bucket/prefix/",
              "WORLD_SIZE": "2", "MAX_EPOCHS": "3", "GPU_POOL": "gpus", "GPU_QUEUE": "gpu", "GPU_RETRY_DELAY_S": "5",
              "TRAIN_SCHEDULE": "@weekly", "SOURCE": "gdrive", "STANDING_SET": "/srv/standing"}
    for name, value in values.items():
        monkeypatch.setenv(getattr(settings, name), f" {value} ")  # surrounding blanks are ignored
    assert settings.home() == Path(tmp_path)
    assert settings.artifacts() == "s3://bucket/prefix"  # no trailing slash
    assert (settings.world_size(), settings.max_epochs()) == (2, 3)
    assert (settings.db_url(), settings.gpu_pool(), settings.gpu_queue()) == ("sqlite:///x.db", "gpus", "gpu")
    assert settings.gpu_retry_delay_s() == 5
    assert (settings.train_schedule(), settings.source(), settings.standing_set()) == \
        ("@weekly", "gdrive", "/srv/standing")
    monkeypatch.setenv(settings.TRAIN_SCHEDULE, "None")
    assert settings.train_schedule() is None


@pytest.mark.parametrize("name, value", [("MAX_EPOCHS", "0"), ("MAX_EPOCHS", "1001"), ("MAX_EPOCHS", "ten"),
                                         ("WORLD_SIZE", "0"), ("WORLD_SIZE", "-2"), ("WORLD_SIZE", "two"),
                                         ("GPU_RETRY_DELAY_S", "-1"), ("GPU_RETRY_DELAY_S", "1m"),
                                         ("GPU_RETRY_DELAY_S", "86401")])
def test_bad_values_name_the_variable(monkeypatch, name, value):
    monkeypatch.setenv(getattr(settings, name), value)
    with pytest.raises(ValueError, match=f"FACEATTR_{name}"):
        getattr(settings, name.lower())()
