"""faceattr's command line: presets, and refusals in one line."""
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

    from faceattr.store.store import Store

    monkeypatch.setenv("FACEATTR_DB_URL", f"sqlite:///{tmp_path / 'store.db'}")
    Store.from_env().close()
    monkeypatch.setattr(views, "format_models", locked)
    assert cli.main(["models"]) == 2
    assert capsys.readouterr().err.strip() == "faceattr models: error: run store: OperationalError: database is locked"


# -- refusals: one line, exit 2, nothing written --------------------------------------------------
def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _bad_config_flags(tmp_path):
    import torch

    flags = [(["--arch", "nosuch"], "arch: 'nosuch'"),
             (["--weights", str(tmp_path / "missing.pt")], "weights:"),
             (["--arch", "resnet18", "--freeze-children", "99"], "freeze_children: 99"),
             (["--seed", "99999999999999999999"], "seed: 99999999999999999999")]
    if not torch.cuda.is_available():
        flags.append((["--device", "cuda"], "device: 'cuda'"))
    return flags


def test_an_invalid_config_is_refused_before_anything_is_written(synth_root, tmp_path, capsys):
    for flags, message in _bad_config_flags(tmp_path):
        run = tmp_path / "run"
        code = cli.main(["split", "--root", str(synth_root), "--out", str(run), *flags])
        assert code == 2, flags
        assert message in _one_line(capsys.readouterr().err), flags
        assert not run.exists(), flags  # not even the folder


def test_a_failed_split_leaves_no_config_and_a_corrected_one_is_taken(synth_root, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    assert cli.main(["split", "--root", str(tmp_path / "no-data"), "--out", str(run), "--arch", "resnet18"]) == 2
    assert "list_attr_celeba.txt: not found" in _one_line(capsys.readouterr().err)
    assert not (run / "config.json").exists()
    # A folder that an older faceattr left with a config.json but no split: the corrected command is taken.
    (run / "config.json").write_text(json.dumps({"arch": "nosuch"}))
    assert cli.main(["split", "--root", str(synth_root), "--out", str(run), "--arch", "resnet18",
                     "--weights", "none"]) == 0
    assert json.loads((run / "config.json").read_text())["arch"] == "resnet18"
    assert (run / "split.csv").is_file()
    # Once split, a different learning config is refused, and nothing changes.
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert cli.main(["split", "--root", str(synth_root), "--out", str(run), "--arch", "resnet34",
                     "--weights", "none"]) == 2
    assert "cannot resume with a different configuration" in _one_line(capsys.readouterr().err)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_out_of_range_numbers_name_their_flag(tmp_path, capsys):
    assert cli.main(["synth", "--out", str(tmp_path / "s"), "--seed", "99999999999999999999"]) == 2
    assert "--seed: 99999999999999999999" in _one_line(capsys.readouterr().err)
    assert cli.main(["evaluate", "--run", str(tmp_path), "--epoch", "abc"]) == 2
    assert "--epoch: 'abc'" in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "s").exists()


def test_a_closed_pipe_ends_quietly(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from faceattr.store.store import Store

    url = f"sqlite:///{tmp_path / 'store.db'}"
    Store(url).close()
    read_end, write_end = os.pipe()
    os.close(read_end)  # `| head -1` gone before faceattr writes
    try:
        result = subprocess.run([sys.executable, "-m", "faceattr.cli", "runs"], stdout=write_end,
                                stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "FACEATTR_DB_URL": url,
                                     "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    finally:
        os.close(write_end)
    assert result.stderr == ""
    assert result.returncode in (0, 141)
