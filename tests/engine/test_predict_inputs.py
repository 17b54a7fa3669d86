"""faceattr.engine.predict's bad inputs: --out a folder or a full disk, names that are not UTF-8,
symlinked folders, links out of FACEATTR_DATA_ROOTS."""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from faceattr.cli import main
from faceattr.run.config import RunConfig
from faceattr.data.access import REFUSED_OUTSIDE
from faceattr.data.images import IMAGE_SIZE
from faceattr.engine.predict import csv_name, file_name, predict
from faceattr.fsutil import NoSpaceError
from faceattr.model import build_model, export_model


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


def _rows(path: Path) -> dict[str, list[str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return {row[0]: row[1:] for row in list(csv.reader(handle))[1:]}


# -- 1. --out a folder, a full disk --------------------------------------------------------------
def test_out_naming_a_folder_is_refused_before_scoring(tmp_path, model_file, capsys):
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.jpg").write_bytes(_jpeg(0))
    folder = tmp_path / "results"
    folder.mkdir()
    with pytest.raises(IsADirectoryError, match=r"results: is a folder; give the path of the \.csv file"):
        predict(model_file, images, folder, device="cpu")
    assert main(["predict", "--device", "cpu", "--model", str(model_file), "--images", str(images), "--out", str(folder)]) == 2
    error = capsys.readouterr().err
    assert f"{folder}: is a folder" in error and "Traceback" not in error


def test_a_full_disk_while_writing_the_csv_names_it(tmp_path, model_file, monkeypatch, capsys):
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.jpg").write_bytes(_jpeg(0))
    out = tmp_path / "out.csv"
    import pandas as pd

    def full_disk(self, path_or_buf=None, *args, **kwargs):
        with open("/dev/full", "w") as handle:  # the kernel's ENOSPC, where the table is written
            handle.write("x" * 100_000)

    monkeypatch.setattr(pd.DataFrame, "to_csv", full_disk)
    with pytest.raises(NoSpaceError, match=r"out.csv: no space left on device"):
        predict(model_file, images, out, device="cpu")
    assert main(["predict", "--device", "cpu", "--model", str(model_file), "--images", str(images), "--out", str(out)]) == 2
    assert "out.csv: no space left on device" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["images"]  # nothing half-written


# -- 2. names that are not UTF-8 -----------------------------------------------------------------
@pytest.mark.parametrize("raw", [b"caf\xe9.jpg", b"back\\slash.jpg", b"plain.jpg", "visage-\u00e9t\u00e9.jpg".encode()])
def test_csv_names_round_trip(raw):
    name = os.fsdecode(raw)
    written = csv_name(name)
    written.encode("utf-8")  # always writable as UTF-8
    assert file_name(written) == name


def test_a_name_that_is_not_utf8_gets_an_escaped_row(tmp_path, model_file):
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.jpg").write_bytes(_jpeg(0))
    (images / os.fsdecode(b"caf\xe9.jpg")).write_bytes(_jpeg(1))  # Latin-1 bytes, as old cameras wrote
    (images / os.fsdecode(b"bad\xff.txt")).write_bytes(b"not an image")
    result = predict(model_file, images, tmp_path / "out.csv", device="cpu")
    assert (result["images"], result["rows"], result["errors"]) == (3, 2, 1)
    assert sorted(_rows(tmp_path / "out.csv")) == ["a.jpg", "caf\\xe9.jpg"]
    assert list(_rows(tmp_path / "out.errors.csv")) == ["bad\\xff.txt"]
    assert os.path.exists(Path(images) / file_name("caf\\xe9.jpg"))  # the row leads back to the file


# -- 3. symlinked folders: followed, once -------------------------------------------------------
def test_symlinked_folders_are_followed_and_every_file_accounted_for(tmp_path, model_file):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "linked.jpg").write_bytes(_jpeg(2))
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    (images / "sub" / "b.jpg").write_bytes(_jpeg(3))
    (images / "a.jpg").write_bytes(_jpeg(4))
    (images / "more").symlink_to(outside, target_is_directory=True)  # skipped silently before
    (images / "again").symlink_to(images / "sub", target_is_directory=True)  # its files are listed already
    (images / "sub" / "loop").symlink_to(images, target_is_directory=True)  # a loop
    (images / "file-link.jpg").symlink_to(outside / "linked.jpg")
    result = predict(model_file, images, tmp_path / "out.csv", device="cpu")
    rows, errors = _rows(tmp_path / "out.csv"), _rows(tmp_path / "out.errors.csv")
    assert sorted(rows) == ["a.jpg", "file-link.jpg", "more/linked.jpg", "sub/b.jpg"]
    assert sorted(errors) == ["again", "sub/loop"]
    assert all("already listed; not followed twice" in reason[0] for reason in errors.values())
    assert result["images"] == result["rows"] + result["errors"] == 6


# -- 4. FACEATTR_DATA_ROOTS: every file's resolved path ------------------------------------------
def test_links_out_of_the_data_roots_are_refused_without_saying_what_is_there(tmp_path, model_file):
    allowed = tmp_path / "allowed"
    images = allowed / "images"
    images.mkdir(parents=True)
    (images / "a.jpg").write_bytes(_jpeg(5))
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "face.jpg").write_bytes(_jpeg(6))
    (images / "hostname").symlink_to("/etc/hostname")  # an existing file outside: was opened before
    (images / "missing").symlink_to(tmp_path / "no-such-file")  # nothing there
    (images / "folder").symlink_to(secret, target_is_directory=True)  # a folder outside
    (images / "inside.jpg").symlink_to(images / "a.jpg")  # inside the roots: fine
    opened = []
    real_open = Image.open

    def watch(source, *args, **kwargs):
        opened.append(str(source))
        return real_open(source, *args, **kwargs)

    Image.open = watch
    try:
        result = predict(model_file, images, allowed / "out.csv", roots=[allowed.resolve()], device="cpu")
    finally:
        Image.open = real_open
    rows, errors = _rows(allowed / "out.csv"), _rows(allowed / "out.errors.csv")
    assert sorted(rows) == ["a.jpg", "inside.jpg"]
    # The same words for an existing file, a missing one and a folder: the errors file tells nothing apart.
    assert errors == {name: [REFUSED_OUTSIDE] for name in ("folder", "hostname", "missing")}
    assert not any("hostname" in path or "secret" in path or "no-such-file" in path for path in opened)
    assert result["images"] == 5


def test_a_file_swapped_for_a_link_after_listing_is_still_refused(tmp_path, model_file):
    from faceattr.engine.predict import ImageFiles

    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "a.jpg").write_bytes(_jpeg(7))
    dataset = ImageFiles.from_path(allowed, transform=lambda image: image, roots=[allowed.resolve()])
    (allowed / "a.jpg").unlink()
    (allowed / "a.jpg").symlink_to("/etc/hostname")
    assert dataset[0] == (0, None, REFUSED_OUTSIDE)
