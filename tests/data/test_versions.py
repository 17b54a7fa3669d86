"""Data versions (faceattr.data.versions): each download of changed data is a version beside the
older ones, hard-linked; a run reads the version it was split from; prune lists, then removes."""
from __future__ import annotations

from pathlib import Path

import pytest

from faceattr.data import versions
from faceattr.data.download import acquire
from faceattr.data.labels import read_attributes
from faceattr.data.loaders import load_split_frame
from faceattr.data.split import make_split
from faceattr.synth.files import generate

LABEL_FILES = ("list_attr_celeba.txt", "list_eval_partition.txt", "identity_CelebA.txt")


# -- data versions ------------------------------------------------------------------------------
def test_new_data_is_a_new_version_beside_the_old_one(synth_source, tmp_path):
    root = tmp_path / "root"
    first = acquire(str(synth_source), root)
    v1 = first["version"]
    assert first["status"] == "downloaded" and first["previous_version"] is None and v1
    assert first["changes"]["images_added"] == 120
    week2 = generate(tmp_path / "week2", n=16, seed=8, base=synth_source)["path"]
    second = acquire(week2, root)
    v2 = second["version"]
    assert (second["status"], second["previous_version"]) == ("downloaded", v1) and v2 != v1
    assert second["changes"] == {"images_added": 16, "images_removed": 0, "images_replaced": 0,
                                 "labels_changed": sorted(LABEL_FILES)}
    assert versions.current_version(root) == v2 and versions.all_versions(root) == sorted([v1, v2])
    old, new = versions.version_dir(root, v1), versions.version_dir(root, v2)
    assert len(read_attributes(old / "list_attr_celeba.txt")) == 120
    assert len(read_attributes(new / "list_attr_celeba.txt")) == 136
    assert len(list((old / "img_align_celeba").iterdir())) == 120
    # An unchanged image is one file in both versions and the current folder: a version costs links.
    inodes = {(folder / "img_align_celeba" / "000001.jpg").stat().st_ino for folder in (old, new, root / "celeba")}
    assert len(inodes) == 1
    again = acquire(week2, root)
    assert (again["status"], again["version"], again["previous_version"]) == ("up-to-date", v2, v1)


def test_a_run_keeps_reading_the_version_it_was_split_from(synth_source, tmp_path):
    root = tmp_path / "root"
    v1 = acquire(str(synth_source), root)["version"]
    run_dir = tmp_path / "run"
    assert make_split(root, "official", 0, run_dir)["data_version"] == v1
    week1 = load_split_frame(run_dir, root=root)
    flipped = generate(tmp_path / "week2", n=16, seed=8, base=synth_source, corrupt="flip")["path"]
    # Next week's labels also edit an old image's row: the old run must not see it.
    attr = Path(flipped) / "list_attr_celeba.txt"
    lines = attr.read_bytes().split(b"\r\n")
    first = lines[2][:13]  # "000001.jpg -1" or "000001.jpg  1": its first attribute
    lines[2] = (b"000001.jpg  1" if first.endswith(b"-1") else b"000001.jpg -1") + lines[2][13:]
    attr.write_bytes(b"\r\n".join(lines))
    v2 = acquire(flipped, root)["version"]
    assert v2 != v1
    assert load_split_frame(run_dir, root=root).equals(week1)
    assert versions.run_dataset_dir(run_dir, root) == versions.version_dir(root, v1)
    assert make_split(root, "official", 0, run_dir)["data_version"] == v1  # a retried split keeps its version
    assert make_split(root, "official", 0, tmp_path / "new-run")["data_version"] == v2


def test_prune_lists_then_removes_only_unused_versions(synth_source, tmp_path):
    root = tmp_path / "root"
    v1 = acquire(str(synth_source), root)["version"]
    make_split(root, "official", 0, tmp_path / "old-run")
    v2 = acquire(generate(tmp_path / "week2", n=16, seed=8, base=synth_source)["path"], root)["version"]
    v3 = acquire(generate(tmp_path / "week3", n=16, seed=9, base=synth_source)["path"], root)["version"]
    listed = versions.prune(root, used=[v1], apply=False)
    assert (listed["unused"], listed["removed"], listed["current"]) == ([v2], [], v3)
    assert versions.all_versions(root) == sorted([v1, v2, v3])
    assert versions.prune(root, used=[v1], apply=True)["removed"] == [v2]
    assert versions.all_versions(root) == sorted([v1, v3])
    versions.prune(root, used=[], apply=True)
    with pytest.raises(FileNotFoundError, match=f"data version {v1} of run old-run .* was it pruned"):
        versions.run_dataset_dir(tmp_path / "old-run", root)


def test_the_cli_makes_next_weeks_data_and_prunes_only_with_yes(synth_source, tmp_path, monkeypatch, capsys):
    from faceattr.cli import main
    from faceattr.store.store import Store

    monkeypatch.setenv("FACEATTR_DB_URL", f"sqlite:///{tmp_path / 'store.db'}")
    root = tmp_path / "root"
    assert main(["synth", "--out", str(tmp_path / "week2"), "--base", str(synth_source), "--n", "8", "--seed", "1",
                 "--corrupt", "shuffle"]) == 0
    assert len(read_attributes(tmp_path / "week2" / "list_attr_celeba.txt")) == 128
    v1 = acquire(str(synth_source), root)["version"]
    v2 = acquire(str(tmp_path / "week2"), root)["version"]
    capsys.readouterr()
    assert main(["data", "prune", "--root", str(root), "--yes"]) == 2  # no run store: no way to tell what runs use
    assert "does not exist" in capsys.readouterr().err and versions.all_versions(root) == sorted([v1, v2])
    Store.from_env().close()  # a run store in which no run uses v1
    assert main(["data", "prune", "--root", str(root)]) == 0
    assert f"current version {v2}" in capsys.readouterr().out and versions.all_versions(root) == sorted([v1, v2])
    assert main(["data", "prune", "--root", str(root), "--yes"]) == 0
    assert f"removed: {v1}" in capsys.readouterr().out and versions.all_versions(root) == [v2]
