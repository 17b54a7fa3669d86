"""faceattr.data.split: random / official / identity splits written as RUN/split.csv, and read back checked."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from faceattr import cli
from faceattr.data.labels import read_attributes, read_identity, read_partition
from faceattr.data.split import SplitError, make_split, read_split

LABEL_FILES = ("list_attr_celeba.txt", "list_eval_partition.txt", "identity_CelebA.txt")


def labels_only_root(synth_root: Path, tmp_path: Path, keep: int | None = None) -> Path:
    """A ROOT with only the label files of `synth_root` (split needs no images), cut to `keep` rows if given."""
    root = tmp_path / "labels-root"
    (root / "celeba").mkdir(parents=True)
    for name in LABEL_FILES:
        source = synth_root / "celeba" / name
        if keep is None:
            shutil.copy(source, root / "celeba" / name)
            continue
        lines = source.read_bytes().split(b"\r\n")
        if name == "list_attr_celeba.txt":
            lines = [str(keep).encode(), lines[1], *lines[2 : 2 + keep]]
        else:
            lines = lines[:keep]
        (root / "celeba" / name).write_bytes(b"\r\n".join(lines) + b"\r\n")
    return root


def counts(split) -> dict[str, int]:
    return {name: int((split == name).sum()) for name in ("train", "val", "test")}


# -- strategies ---------------------------------------------------------------------------------
def test_random_split_is_the_write_ups_80_10_10(synth_root, tmp_path):
    from sklearn.model_selection import train_test_split

    result = make_split(synth_root, "random", 5, tmp_path / "run")
    assert {k: result[k] for k in ("train", "val", "test")} == {"train": 240, "val": 30, "test": 30}
    assert result["strategy"] == "random" and result["path"] == str(tmp_path / "run" / "split.csv")

    split = read_split(tmp_path / "run")
    ids = sorted(read_attributes(synth_root / "celeba" / "list_attr_celeba.txt").index)
    assert list(split.index) == ids  # every image once, sorted
    train, rest = train_test_split(ids, test_size=0.2, random_state=5)
    val, test = train_test_split(rest, test_size=0.5, random_state=5)
    assert set(split[split == "train"].index) == set(train)
    assert set(split[split == "val"].index) == set(val)
    assert set(split[split == "test"].index) == set(test)


def test_same_seed_same_bytes_other_seed_other_split(synth_root, tmp_path):
    for strategy in ("random", "identity"):
        make_split(synth_root, strategy, 3, tmp_path / f"{strategy}-a")
        make_split(synth_root, strategy, 3, tmp_path / f"{strategy}-b")
        make_split(synth_root, strategy, 4, tmp_path / f"{strategy}-c")
        a, b, c = ((tmp_path / f"{strategy}-{x}" / "split.csv").read_bytes() for x in "abc")
        assert a == b and a != c, strategy
        assert a.startswith(b"image_id,split\n000001.jpg,")


def test_official_split_follows_the_partition_file(synth_root, tmp_path):
    result = make_split(synth_root, "official", 0, tmp_path / "run")
    partition = read_partition(synth_root / "celeba" / "list_eval_partition.txt")
    expected = partition.map({0: "train", 1: "val", 2: "test"})
    split = read_split(tmp_path / "run")
    assert split.sort_index().equals(expected.sort_index().rename("split").astype(split.dtype))
    assert result["train"] == int((partition == 0).sum()) and result["test"] == int((partition == 2).sum())


def test_identity_split_keeps_each_person_in_one_part(synth_root, tmp_path):
    result = make_split(synth_root, "identity", 2, tmp_path / "run")
    split = read_split(tmp_path / "run")
    identity = read_identity(synth_root / "celeba" / "identity_CelebA.txt").reindex(split.index)
    parts_per_person = split.groupby(identity).nunique()
    assert (parts_per_person == 1).all()
    people = identity.groupby(split).nunique()
    total_people = identity.nunique()
    # 80/10/10 of the identities (GroupShuffleSplit rounds the held-out share up).
    assert people["train"] == total_people - int(np.ceil(0.2 * total_people))
    assert people["val"] + people["test"] == int(np.ceil(0.2 * total_people))
    assert 0.7 < result["train"] / 300 < 0.9 and result["val"] > 0 and result["test"] > 0


# -- errors -----------------------------------------------------------------------------------------
def test_identity_file_missing(synth_root, tmp_path):
    root = labels_only_root(synth_root, tmp_path)
    (root / "celeba" / "identity_CelebA.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"identity_CelebA\.txt: not found; the identity split needs"):
        make_split(root, "identity", 0, tmp_path / "run")
    assert not (tmp_path / "run" / "split.csv").exists(), "a refused split wrote split.csv"
    assert make_split(root, "random", 0, tmp_path / "run")["train"] == 240  # the others still work
    assert (tmp_path / "run" / "split.csv").is_file()


def test_too_few_images(synth_root, tmp_path):
    root = labels_only_root(synth_root, tmp_path, keep=6)
    with pytest.raises(SplitError, match=r"6 images are too few for 80/10/10"):
        make_split(root, "random", 0, tmp_path / "run")
    with pytest.raises(SplitError, match=r"identities are too few"):
        make_split(root, "identity", 0, tmp_path / "run")
    assert not (tmp_path / "run" / "split.csv").exists()


def test_official_split_with_an_empty_part(synth_root, tmp_path):
    root = labels_only_root(synth_root, tmp_path)
    path = root / "celeba" / "list_eval_partition.txt"
    path.write_bytes(path.read_bytes().replace(b" 2\r\n", b" 0\r\n"))
    with pytest.raises(SplitError, match=r"the official split of 300 images leaves test empty"):
        make_split(root, "official", 0, tmp_path / "run")


def test_partition_file_missing_an_image(synth_root, tmp_path):
    root = labels_only_root(synth_root, tmp_path)
    path = root / "celeba" / "list_eval_partition.txt"
    path.write_bytes(b"\r\n".join(path.read_bytes().split(b"\r\n")[1:]))
    with pytest.raises(SplitError, match=r"list_eval_partition\.txt: has no row for 1 image\(s\) .*000001\.jpg"):
        make_split(root, "official", 0, tmp_path / "run")


def test_bad_strategy_and_missing_labels(synth_root, tmp_path):
    with pytest.raises(SplitError, match=r"strategy: 'stratified' is not one of random, official, identity"):
        make_split(synth_root, "stratified", 0, tmp_path / "run")
    with pytest.raises(FileNotFoundError, match=r"list_attr_celeba\.txt: not found; run 'faceattr download"):
        make_split(tmp_path / "nothing", "random", 0, tmp_path / "run")


@pytest.mark.parametrize(
    "text, where, what",
    [
        ("", "line 1", "expected the header 'image_id,split', found an empty file"),
        ("id,part\n000001.jpg,train\n", "line 1", "found 'id,part'"),
        ("image_id,split\n000001.jpg,train\n000002.jpg,dev\n", "line 3", "found '000002.jpg,dev'"),
        ("image_id,split\n000001.jpg,train,x\n", "line 2", "expected 'image_id,train|val|test'"),
        ("image_id,split\n,train\n", "line 2", "expected 'image_id,train|val|test'"),
        ("image_id,split\n000001.jpg,train\n000001.jpg,test\n", "line 3", "listed again (first on line 2)"),
        ("image_id,split\n", "", "no rows after the header"),
    ],
)
def test_read_split_checks_the_file(tmp_path, text, where, what):
    (tmp_path / "split.csv").write_text(text)
    with pytest.raises(SplitError) as info:
        read_split(tmp_path)
    message = str(info.value)
    assert str(tmp_path / "split.csv") in message and what in message and where in message, message


def test_read_split_of_a_run_without_one(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"split\.csv: not found; run 'faceattr split' first"):
        read_split(tmp_path)


# -- the command line ------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["random", "official", "identity"])
def test_cli_split(synth_root, tmp_path, capsys, strategy):
    run = tmp_path / "run"
    code = cli.main(["split", "--root", str(synth_root), "--strategy", strategy, "--seed", "1", "--out", str(run)])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    config = json.loads((run / "config.json").read_text())
    assert config["split"] == strategy and config["seed"] == 1 and config["root"] == str(synth_root)
    split = read_split(run)
    assert len(split) == 300 and counts(split) == {k: result[k] for k in ("train", "val", "test")}
    shares = {k: v / 300 for k, v in counts(split).items()}
    if strategy == "random":
        assert counts(split) == {"train": 240, "val": 30, "test": 30}
    else:  # official (synth writes 81/10/9) and identity: near 80/10/10
        assert 0.7 < shares["train"] < 0.9 and 0.04 < shares["val"] < 0.16 and 0.04 < shares["test"] < 0.16


def test_cli_split_error_exit_code(synth_root, tmp_path, capsys):
    root = labels_only_root(synth_root, tmp_path, keep=6)
    assert cli.main(["split", "--root", str(root), "--strategy", "random", "--out", str(tmp_path / "run")]) == 2
    assert "too few" in capsys.readouterr().err


# -- real data ------------------------------------------------------------------------------------------
@pytest.mark.realdata
def test_full_official_annotations(celeba_annotations, tmp_path):
    root = tmp_path / "root"
    (root / "celeba").mkdir(parents=True)
    for name in LABEL_FILES:  # link, never copy, the real files
        (root / "celeba" / name).symlink_to(celeba_annotations / name)

    official = make_split(root, "official", 0, tmp_path / "official")
    assert (official["train"], official["val"], official["test"]) == (162_770, 19_867, 19_962)

    identity = make_split(root, "identity", 0, tmp_path / "identity")
    split = read_split(tmp_path / "identity")
    people = read_identity(celeba_annotations / "identity_CelebA.txt").reindex(split.index)
    assert (split.groupby(people).nunique() == 1).all()
    assert people.groupby(split).nunique().sum() == 10_177
    assert 0.77 < identity["train"] / 202_599 < 0.83 and 0.08 < identity["test"] / 202_599 < 0.12
