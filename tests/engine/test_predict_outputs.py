"""What `faceattr predict` writes, and what it must never touch: --out refused before any work when it
could destroy something, both CSVs replaced together or not at all, names that survive a CSV cell,
folders listed once however they are reached, and FACEATTR_DATA_ROOTS on the paths given."""
from __future__ import annotations

import csv
import errno
import hashlib
import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from faceattr.cli import main
from faceattr.data.images import IMAGE_SIZE
from faceattr.engine import predict_io
from faceattr.engine.predict import predict
from faceattr.engine.predict_io import REFUSED_HARD_LINK, csv_name, file_name, list_folder
from faceattr.model import build_model, export_model
from faceattr.run.config import RunConfig


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    return export_model(path, build_model("resnet18", "none", 0).state_dict(), RunConfig(arch="resnet18", weights="none"),
                        epoch=1, thresholds=np.zeros(40), run="test-run", val_mean_accuracy=0.5)


def _jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (IMAGE_SIZE[1], IMAGE_SIZE[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG")
    return buffer.getvalue()


def _images(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate(names):
        (folder / name).write_bytes(_jpeg(seed))
    return folder


def _digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder` (links not followed), by relative path."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            found[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def _rows(path: Path) -> dict[str, list[str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return {row[0]: row[1:] for row in list(csv.reader(handle))[1:]}


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# -- --out that could destroy something ------------------------------------------------------------
def _run_folder(root: Path) -> Path:
    run = root / "run"
    run.mkdir(parents=True)
    (run / "config.json").write_text('{"arch": "resnet18"}\n')
    (run / "split.csv").write_text("image_id,split\na.jpg,train\n")
    (run / "model.pt").write_bytes(b"model bytes")
    (run / "model.pt.sha256").write_text("0" * 64 + "  model.pt\n")
    (run / "report").mkdir()
    (run / "report" / "per_attribute.csv").write_text("attribute,accuracy\nSmiling,0.9\n")
    return run


@pytest.mark.parametrize("out, message", [
    ("run/model.pt", "not a .csv path"),
    ("run/config.json", "not a .csv path"),
    ("run/split.csv", "inside the run folder"),
    ("run/report/per_attribute.csv", "inside the run folder"),
    ("images/b.jpg", "not a .csv path"),
    ("images/preds.csv", "inside the images folder"),
    ("labels/list_attr_celeba.txt", "not a .csv path"),
    ("labels/mine.csv", "exists and is not a predictions CSV"),
    ("labels/copied_split.csv", "exists and is not a predictions CSV"),
    ("labels/preds", "not a .csv path"),
])
def test_an_out_that_could_destroy_a_file_is_refused_and_nothing_is_written(tmp_path, model_file, capsys, out,
                                                                              message):
    _run_folder(tmp_path)
    _images(tmp_path / "images", "a.jpg", "b.jpg")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "list_attr_celeba.txt").write_text("2\nheader\n")
    (tmp_path / "labels" / "mine.csv").write_text("name,score\nx,1\n")
    (tmp_path / "labels" / "copied_split.csv").write_text("image_id,split\na.jpg,train\n")
    (tmp_path / "labels" / "preds").write_bytes(b"\x00binary")
    before = _digests(tmp_path)
    code = main(["predict", "--model", str(model_file), "--images", str(tmp_path / "images"),
                 "--out", str(tmp_path / out)])
    line = _one_line(capsys.readouterr().err)
    assert code == 2
    assert message in line and out.rsplit("/", 1)[-1] in line
    assert _digests(tmp_path) == before  # byte-identical, nothing added


def test_the_run_folders_own_predictions_file_may_be_written(tmp_path, model_file):
    run = _run_folder(tmp_path)
    images = _images(tmp_path / "images", "a.jpg")
    predict(model_file, images, run / "private_predictions.csv")
    assert list(_rows(run / "private_predictions.csv")) == ["a.jpg"]


def test_a_previous_predictions_csv_is_replaced(tmp_path, model_file):
    images = _images(tmp_path / "images", "a.jpg")
    out = tmp_path / "preds.csv"
    predict(model_file, images, out)
    (images / "b.jpg").write_bytes(_jpeg(9))
    predict(model_file, images, out)
    assert sorted(_rows(out)) == ["a.jpg", "b.jpg"]


# -- both CSVs or neither ------------------------------------------------------------------------
def test_a_full_disk_on_the_errors_file_leaves_both_previous_files_as_they_were(tmp_path, model_file, monkeypatch,
                                                                                capsys):
    images = _images(tmp_path / "images", "a.jpg")
    (images / "bad.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "out" / "preds.csv"
    predict(model_file, images, out)
    (images / "c.jpg").write_bytes(_jpeg(5))  # the next run would change both files
    before = _digests(tmp_path / "out")
    real_to_csv = pd.DataFrame.to_csv

    def full_on_errors(self, path_or_buf=None, *args, **kwargs):
        if ".errors.csv" in Path(path_or_buf).name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_to_csv(self, path_or_buf, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_csv", full_on_errors)
    assert main(["predict", "--model", str(model_file), "--images", str(images), "--out", str(out)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "preds.errors.csv: no space left on device" in line and "nothing was replaced" in line
    assert _digests(tmp_path / "out") == before
    assert sorted(os.listdir(tmp_path / "out")) == ["preds.csv", "preds.errors.csv"]  # no temporary left


# -- names ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw", [b"new\rline.jpg", b"two\nlines.jpg", b"tab\there.jpg", b"bell\x07.jpg", b"del\x7f.jpg",
                                 "c1\u0085.jpg".encode(), "sep\u2028.jpg".encode(), b"=cmd.jpg", b"+1.jpg", b"-1.jpg",
                                 b"@sum.jpg", b"a=b.jpg", b"back\\x41.jpg", b"caf\xe9\r.jpg"])
def test_every_name_round_trips_through_one_csv_cell(raw):
    name = os.fsdecode(raw)
    image_id = csv_name(name)
    assert file_name(image_id) == name
    assert not any(ord(c) < 32 or 0x7f <= ord(c) <= 0x9f or c in "\u2028\u2029" for c in image_id)
    assert not image_id.startswith(("=", "+", "-", "@"))


def test_a_carriage_return_in_a_file_name_is_one_row_that_leads_back_to_the_file(tmp_path, model_file):
    images = _images(tmp_path / "images", "new\rline.jpg", "=cmd.jpg", "plain.jpg")
    (images / "bad\nname.jpg").write_bytes(b"not a jpeg")
    result = predict(model_file, images, tmp_path / "out.csv")
    assert (result["rows"], result["errors"]) == (3, 1)
    raw = (tmp_path / "out.csv").read_bytes()
    assert raw.count(b"\n") == 4 and b"\r" not in raw  # a header and three rows, one line each
    rows, errors = _rows(tmp_path / "out.csv"), _rows(tmp_path / "out.errors.csv")
    assert all((images / file_name(image_id)).is_file() for image_id in [*rows, *errors])
    assert "\\x3dcmd.jpg" in rows and list(errors) == ["bad\\x0aname.jpg"]


# -- the folder walk -----------------------------------------------------------------------------
def test_a_link_to_an_ancestor_does_not_list_the_scored_folder_again(tmp_path, model_file):
    top = _images(tmp_path / "top", "a.jpg")
    (tmp_path / "sibling.jpg").write_bytes(_jpeg(3))
    (top / "up").symlink_to("..", target_is_directory=True)
    (top / "self").symlink_to(".", target_is_directory=True)
    result = predict(model_file, top, tmp_path / "out.csv")
    assert list(_rows(tmp_path / "out.csv")) == ["a.jpg"]
    assert sorted(_rows(tmp_path / "out.errors.csv")) == ["self", "up"]
    assert result["images"] == 3


def test_an_error_reading_one_files_metadata_is_its_error_row(tmp_path, monkeypatch):
    folder = _images(tmp_path / "images", "a.jpg", "b.jpg")
    (folder / "swapped").symlink_to(folder / "a.jpg")
    real_realpath = os.path.realpath

    def flaky(path, *args, **kwargs):  # a file swapped for a link while it is resolved
        if str(path).endswith("swapped"):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_realpath(path, *args, **kwargs)

    monkeypatch.setattr(predict_io.os.path, "realpath", flaky)
    refused: dict[str, str] = {}
    found = list_folder(folder, roots=[folder.resolve()], refused=refused)
    assert found == ["a.jpg", "b.jpg"]
    assert refused == {"swapped": "cannot read its metadata (Invalid argument)"}


def test_an_error_resolving_a_file_at_read_time_is_its_error_row(tmp_path, monkeypatch):
    from faceattr.engine.predict import ImageFiles

    folder = _images(tmp_path / "images", "a.jpg")
    dataset = ImageFiles.from_path(folder, transform=lambda image: image, roots=[folder.resolve()])
    monkeypatch.setattr(predict_io.os.path, "realpath",
                        lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EINVAL, "Invalid argument")))
    assert dataset[0] == (0, None, "cannot read its metadata (Invalid argument)")


# -- FACEATTR_DATA_ROOTS on the paths given ------------------------------------------------------
def test_the_cli_applies_the_data_roots_to_images_and_out(tmp_path, model_file, monkeypatch, capsys):
    allowed = tmp_path / "allowed"
    inside = _images(allowed / "images", "a.jpg")
    outside = _images(tmp_path / "outside", "b.jpg")
    monkeypatch.setenv("FACEATTR_DATA_ROOTS", str(allowed))
    before = _digests(tmp_path)
    assert main(["predict", "--model", str(model_file), "--images", str(outside), "--out",
                 str(allowed / "out.csv")]) == 2
    assert "--images:" in _one_line(capsys.readouterr().err)
    assert main(["predict", "--model", str(model_file), "--images", str(inside), "--out",
                 str(tmp_path / "out.csv")]) == 2
    assert "--out:" in _one_line(capsys.readouterr().err)
    (allowed / "link").symlink_to(tmp_path / "outside", target_is_directory=True)
    assert main(["predict", "--model", str(model_file), "--images", str(allowed / "link"), "--out",
                 str(allowed / "out.csv")]) == 2
    line = _one_line(capsys.readouterr().err)
    assert str(allowed / "link") in line and "outside" not in line.replace("outside the allowed", "")
    assert _digests(tmp_path) == before


def test_with_data_roots_a_file_with_a_second_hard_link_is_refused(tmp_path, model_file):
    allowed = tmp_path / "allowed"
    images = _images(allowed / "images", "a.jpg")
    outside = _images(tmp_path / "outside", "secret.jpg")
    os.link(outside / "secret.jpg", images / "hard.jpg")
    predict(model_file, images, allowed / "out.csv", roots=[allowed.resolve()])
    assert list(_rows(allowed / "out.csv")) == ["a.jpg"]
    assert _rows(allowed / "out.errors.csv") == {"hard.jpg": [REFUSED_HARD_LINK]}


def test_a_batch_size_of_zero_is_refused_naming_the_flag(tmp_path, model_file, capsys):
    images = _images(tmp_path / "images", "a.jpg")
    assert main(["predict", "--model", str(model_file), "--images", str(images), "--out", str(tmp_path / "o.csv"),
                 "--batch-size", "0"]) == 2
    assert "--batch-size: 0" in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "o.csv").exists()
