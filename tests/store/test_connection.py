"""Opening the run store: readers never create it, `postgresql://` takes the installed driver, and
every store error is one line."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from faceattr import cli
from faceattr.store.connection import StoreError, StoreMissingError, make_engine
from faceattr.store.store import Store


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("argv", [["runs"], ["runs", "show", "x"], ["models"]])
def test_a_reading_command_never_creates_a_store(tmp_path, monkeypatch, capsys, argv):
    missing = tmp_path / "no-folder" / "faceatr.db"  # a typo, in a folder that does not exist
    monkeypatch.setenv("FACEATTR_DB_URL", f"sqlite:///{missing}")
    assert cli.main(argv) == 2
    line = _one_line(capsys.readouterr().err)
    assert str(missing) in line and "does not exist" in line and "make run" in line
    assert not (tmp_path / "no-folder").exists()


def test_predict_with_the_champion_never_creates_a_store(tmp_path, monkeypatch, capsys):
    store = tmp_path / "faceatr.db"
    monkeypatch.setenv("FACEATTR_DB_URL", f"sqlite:///{store}")
    (tmp_path / "images").mkdir()
    assert cli.main(["predict", "--model", "champion", "--images", str(tmp_path / "images"), "--out",
                     str(tmp_path / "out.csv")]) == 2
    assert "does not exist" in _one_line(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]


def test_an_empty_database_file_is_not_made_a_store_by_a_reader(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    monkeypatch.setenv("FACEATTR_DB_URL", f"sqlite:///{empty}")
    assert cli.main(["runs"]) == 2
    assert "does not exist" in _one_line(capsys.readouterr().err)
    assert empty.read_bytes() == b""


def test_a_writer_still_creates_the_store(tmp_path):
    path = tmp_path / "new" / "store.db"
    Store(f"sqlite:///{path}").close()
    assert path.is_file()
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    Store(f"sqlite:///{path}", create=False).close()  # a reader opens what exists, unchanged
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_a_reader_of_a_missing_store_gets_store_missing(tmp_path):
    with pytest.raises(StoreMissingError, match="does not exist"):
        Store(f"sqlite:///{tmp_path / 'x.db'}", create=False)


def test_postgresql_urls_take_the_installed_psycopg2_driver():
    pytest.importorskip("psycopg2")
    engine = make_engine("postgresql://nobody:secret@127.0.0.1:1/faceattr")
    try:
        assert engine.dialect.driver == "psycopg2"
    finally:
        engine.dispose()


def test_an_unreachable_postgresql_is_one_line(monkeypatch, capsys):
    pytest.importorskip("psycopg2")
    with pytest.raises(StoreError) as refused:
        Store("postgresql://nobody:secret@127.0.0.1:1/faceattr")
    assert "\n" not in str(refused.value) and "secret" not in str(refused.value)
    monkeypatch.setenv("FACEATTR_DB_URL", "postgresql://nobody:secret@127.0.0.1:1/faceattr")
    assert cli.main(["runs"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "run store postgresql+psycopg2://nobody:***@127.0.0.1:1/faceattr" in line


@pytest.mark.parametrize("model", ["champion", "runA"])
def test_a_local_file_cannot_stand_in_for_a_registry_name(tmp_path, monkeypatch, capsys, model):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FACEATTR_DB_URL", f"sqlite:///{tmp_path / 'store.db'}")
    Store.from_env().close()
    Path(model).mkdir() if model == "champion" else Path(model).write_bytes(b"not a model")
    (tmp_path / "images").mkdir()
    assert cli.main(["predict", "--model", model, "--images", "images", "--out", "out.csv"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "run store" in line or "published" in line, line  # answered by the registry, not the local file
    assert not Path("out.csv").exists()
