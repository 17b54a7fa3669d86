"""faceattr's command line: the --preset flag names the GPU settings (batch size, data path, workers)."""
from __future__ import annotations

import json

import pytest

from faceattr import cli
from faceattr.run.config import PRESETS


def test_preset_sets_its_fields_and_explicit_flags_win(synth_root, tmp_path):
    run = tmp_path / "run"
    cli.main(["split", "--root", str(synth_root), "--out", str(run), "--preset", "gpu", "--device", "cpu",
              "--num-workers", "0"])
    saved = json.loads((run / "config.json").read_text())
    assert saved["batch_size"] == PRESETS["gpu"]["batch_size"] != 64
    assert saved["data_path"] == "cache"
    assert saved["device"] == "cpu"  # the flag given beats the preset's cuda


def test_unknown_preset_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["split", "--root", "r", "--out", "o", "--preset", "tpu"])
    assert exit_info.value.code == 2
    assert "--preset: invalid choice: 'tpu'" in capsys.readouterr().err


def test_a_run_store_error_is_a_clear_message(tmp_path, monkeypatch, capsys):
    """A locked SQLite file or a dropped connection: one line naming the run store, exit 2, no traceback."""
    from sqlalchemy.exc import OperationalError

    from faceattr import views

    def locked(store):
        raise OperationalError("SELECT 1", {}, Exception("database is locked"))

    monkeypatch.setenv("FACEATTR_DB_URL", f"sqlite:///{tmp_path / 'store.db'}")
    monkeypatch.setattr(views, "format_models", locked)
    assert cli.main(["models"]) == 2
    assert capsys.readouterr().err.strip() == "faceattr models: error: run store: OperationalError: database is locked"
