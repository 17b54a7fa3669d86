"""Atomic writes: nothing half-written, readable permissions, temp file cleaned on failure."""
from __future__ import annotations

import os
import stat

import pytest

import errno
import time

from faceattr.fsutil import NoSpaceError, atomic_path, read_json, write_json, write_text


def test_failed_write_leaves_target_and_no_temp(tmp_path):
    target = tmp_path / "result.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert read_json(target) == {"v": 1}
    assert os.listdir(tmp_path) == ["result.json"]


def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_json(tmp_path / "x.json", [])
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_read_json_names_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        read_json(bad)


def test_a_full_disk_names_the_file_and_leaves_nothing(tmp_path):
    target = tmp_path / "predictions.csv"
    write_text(target, "old\n")
    with pytest.raises(NoSpaceError, match=r"predictions.csv: no space left on device") as caught:
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            with open("/dev/full", "wb") as full:  # the kernel's own ENOSPC
                full.write(b"x" * 10)
                full.flush()
    assert caught.value.errno == errno.ENOSPC and isinstance(caught.value, OSError)
    assert target.read_text() == "old\n" and os.listdir(tmp_path) == ["predictions.csv"]


def test_stale_temp_files_go_when_the_next_write_succeeds(tmp_path):
    target = tmp_path / "best.json"
    stale = tmp_path / ".best.json.tmp-killed"  # a writer killed mid-write, minutes ago
    stale.write_text("{")
    old = time.time() - 600
    os.utime(stale, (old, old))
    fresh = tmp_path / ".best.json.tmp-writing"  # another write still under way
    fresh.write_text("{")
    other = tmp_path / ".other.json.tmp-killed"  # another file's leftover: not this write's business
    other.write_text("{")
    os.utime(other, (old, old))
    with pytest.raises(RuntimeError):
        with atomic_path(target):
            raise RuntimeError("a failed write removes nothing")
    assert stale.exists()
    write_json(target, {"epoch": 1})
    assert sorted(os.listdir(tmp_path)) == [".best.json.tmp-writing", ".other.json.tmp-killed", "best.json"]



def test_files_written_together_are_replaced_together_or_not_at_all(tmp_path):
    from faceattr.fsutil import atomic_paths

    first, second = tmp_path / "a.csv", tmp_path / "a.errors.csv"
    first.write_text("old a\n")
    second.write_text("old errors\n")
    with pytest.raises(OSError, match="disk gone"):
        with atomic_paths(first, second) as (tmp_first, tmp_second):
            tmp_first.write_text("new a\n")
            raise OSError(5, "disk gone")  # while the second file is written
    assert (first.read_text(), second.read_text()) == ("old a\n", "old errors\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "a.errors.csv"]
    with atomic_paths(first, second) as (tmp_first, tmp_second):
        tmp_first.write_text("new a\n")
        tmp_second.write_text("new errors\n")
    assert (first.read_text(), second.read_text()) == ("new a\n", "new errors\n")
