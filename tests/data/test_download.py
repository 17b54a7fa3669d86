"""faceattr.data.download (verify, extract, re-run) with data.sources (a folder, an http mirror, Google Drive); bad input."""
from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import json
import logging
import os
import shutil
import sys
import threading
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest

from faceattr import cli
from faceattr.data import download, sources
from faceattr.data.download import acquire
from faceattr.data.labels import read_attributes
from faceattr.data.sources import DownloadError

LABEL_FILES = ("list_attr_celeba.txt", "list_eval_partition.txt", "identity_CelebA.txt")


# -- helpers ------------------------------------------------------------------------------------
class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def serve(folder: Path):
    """An http server on 127.0.0.1 (random port) serving `folder`, shut down afterwards."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture
def source(synth_source, tmp_path) -> Path:
    """A private copy of the synthetic distribution (120 images), free to damage."""
    return Path(shutil.copytree(synth_source, tmp_path / "source"))


def image_names(root: Path) -> list[str]:
    return sorted(os.listdir(root / "celeba" / "img_align_celeba"))


def rewrite_zip(path: Path, entries: dict[str, bytes]) -> None:
    path.unlink()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)


def zip_entries(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist() if not info.is_dir()}


HTML_PAGE = b"<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body></body></html>"


# -- a local folder -----------------------------------------------------------------------------
def test_local_folder_then_nothing_to_do(source, tmp_path, monkeypatch, caplog):
    root = tmp_path / "root"
    result = acquire(str(source), root)
    assert result["status"] == "downloaded" and result["official"] is False
    assert result["counts"] == {"attributes": 120, "partition": 120, "identity": 120, "images": 120}
    celeba = root / "celeba"
    assert image_names(root) == sorted(Path(n).name for n in zip_entries(source / "img_align_celeba.zip"))
    for name in LABEL_FILES:
        assert (celeba / name).read_bytes() == (source / name).read_bytes()
    some = "img_align_celeba/000007.jpg"
    assert (celeba / some).read_bytes() == zip_entries(source / "img_align_celeba.zip")[some]
    manifest = json.loads((celeba / "manifest.json").read_text())
    zip_sha = hashlib.sha256((source / "img_align_celeba.zip").read_bytes()).hexdigest()
    assert manifest["archive"]["sha256"] == zip_sha
    assert manifest["files"]["list_attr_celeba.txt"]["sha256"] == hashlib.sha256(
        (source / "list_attr_celeba.txt").read_bytes()).hexdigest()
    assert not list(celeba.glob(".staging-*"))

    # A second run does no work, and says so.
    monkeypatch.setattr(download, "_extract", lambda *a: pytest.fail("re-extracted up-to-date data"))
    monkeypatch.setattr(download, "_hash_file", lambda *a, **k: pytest.fail("re-hashed unchanged files"))
    with caplog.at_level(logging.INFO, logger="faceattr.data.download"):
        again = acquire(str(source), root)
    assert again["status"] == "up-to-date" and again["counts"] == result["counts"]
    assert "nothing to do" in caplog.text


def test_touched_file_is_rehashed_changed_file_refetched(source, tmp_path):
    root = tmp_path / "root"
    acquire(str(source), root)
    attr = root / "celeba" / "list_attr_celeba.txt"
    os.utime(attr, ns=(1, 1))  # same contents, new mtime: trusted after a re-hash
    assert acquire(str(source), root)["status"] == "up-to-date"

    original = attr.read_bytes()
    attr.write_bytes(original + b"\r\n")  # changed: fetched again from the source
    assert acquire(str(source), root)["status"] == "downloaded"
    assert attr.read_bytes() == original

    (root / "celeba" / "img_align_celeba" / "000003.jpg").unlink()
    assert acquire(str(source), root)["status"] == "downloaded"
    assert len(image_names(root)) == 120


def test_changed_source_is_fetched_again(source, synth_source, tmp_path):
    root = tmp_path / "root"
    acquire(str(source), root)
    from faceattr.synth.files import generate

    generate(source, n=30, seed=99)  # new data in the same folder
    result = acquire(str(source), root)
    assert result["status"] == "downloaded" and result["counts"]["images"] == 30
    assert len(image_names(root)) == 30


def test_extracted_folder_and_torchvision_root(source, tmp_path):
    with zipfile.ZipFile(source / "img_align_celeba.zip") as archive:
        archive.extractall(source)
    (source / "img_align_celeba.zip").unlink()
    first = tmp_path / "first"
    assert acquire(str(source), first)["counts"]["images"] == 120

    # A torchvision ROOT (ROOT/celeba/...) works as a source, and as its own destination.
    second = acquire(str(first), tmp_path / "second")
    assert second["status"] == "downloaded" and len(image_names(tmp_path / "second")) == 120
    (first / "celeba" / "manifest.json").unlink()
    in_place = acquire(str(first), first)
    assert in_place["status"] == "downloaded" and len(image_names(first)) == 120
    assert acquire(str(first), first)["status"] == "up-to-date"


def test_identity_file_is_optional(source, tmp_path):
    (source / "identity_CelebA.txt").unlink()
    result = acquire(str(source), tmp_path / "root")
    assert result["counts"]["identity"] is None
    assert not (tmp_path / "root" / "celeba" / "identity_CelebA.txt").exists()


def test_interrupted_run_leaves_nothing_trusted(source, tmp_path, monkeypatch):
    root = tmp_path / "root"
    celeba = root / "celeba"
    acquire(str(source), root)
    (source / "list_eval_partition.txt").touch()  # the source changed: the next run must redo the work

    def killed(zip_path, origin, names, staging):
        (staging / "img_align_celeba").mkdir()
        (staging / "img_align_celeba" / "000001.jpg").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(download, "_extract", killed)
    with pytest.raises(KeyboardInterrupt):
        acquire(str(source), root)
    assert not (celeba / "manifest.json").exists()
    # A hard kill would leave its staging folder behind; the next run clears it.
    (celeba / ".staging-killed").mkdir()
    monkeypatch.undo()
    result = acquire(str(source), root)
    assert result["status"] == "downloaded" and len(image_names(root)) == 120
    assert not list(celeba.glob(".staging-*"))


def test_progress_lines_when_not_a_terminal(source, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(download, "LOG_EVERY_S", 0.0)
    with caplog.at_level(logging.INFO, logger="faceattr.progress"):
        acquire(str(source), tmp_path / "root")
    extract_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("extract ")]
    assert len(extract_lines) == 120  # one per entry at interval 0, the last one at 100 %
    assert " MiB (100%), " in extract_lines[-1]


# -- an http mirror ---------------------------------------------------------------------------------
def test_http_mirror(source, tmp_path):
    root = tmp_path / "root"
    with serve(source) as url:
        result = acquire(url, root)
        assert result["status"] == "downloaded" and result["counts"]["images"] == 120
        assert result["source"] == url.rstrip("/")
        assert (root / "celeba" / "img_align_celeba.zip").read_bytes() == (source / "img_align_celeba.zip").read_bytes()
        assert acquire(url, root)["status"] == "up-to-date"


def test_http_html_page_instead_of_zip(source, tmp_path):
    (source / "img_align_celeba.zip").write_bytes(HTML_PAGE)
    with serve(source) as url, pytest.raises(DownloadError) as info:
        acquire(url, tmp_path / "root")
    message = str(info.value)
    assert f"{url}img_align_celeba.zip" in message and "HTML page" in message
    assert "by hand" in message and "mirror" in message
    assert not (tmp_path / "root" / "celeba" / "manifest.json").exists()


def test_http_missing_files(source, tmp_path):
    (source / "identity_CelebA.txt").unlink()
    with serve(source) as url:
        assert acquire(url, tmp_path / "a")["counts"]["identity"] is None  # optional: a 404 is fine
        (source / "list_eval_partition.txt").unlink()
        with pytest.raises(DownloadError, match=r"list_eval_partition\.txt: not found"):
            acquire(url, tmp_path / "b")


# -- Google Drive ---------------------------------------------------------------------------------
def test_gdrive_without_gdown(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gdown", None)  # import gdown -> ImportError
    with pytest.raises(DownloadError, match=r"pip install 'faceattr\[gdrive\]'.*by hand.*mirror"):
        acquire("gdrive", tmp_path / "root")


def test_gdrive_ids_and_quota_page(source, tmp_path, monkeypatch):
    requested = []

    def fake_download(id, output, quiet):
        requested.append(id)
        name = {v: k for k, v in sources.GDRIVE_IDS.items()}[id]
        data = HTML_PAGE if name == "img_align_celeba.zip" else (source / name).read_bytes()
        Path(output).write_bytes(data)
        return output

    monkeypatch.setitem(sys.modules, "gdown", types.SimpleNamespace(download=fake_download))
    with pytest.raises(DownloadError) as info:
        acquire("gdrive", tmp_path / "root")
    assert "Google Drive file 0B7EVK8r0v71pZjFTYXZWM3FlRnM (img_align_celeba.zip): is an HTML page" in str(info.value)
    assert requested == [
        "0B7EVK8r0v71pblRyaVFSWGxPY0U", "0B7EVK8r0v71pY0NSMzRuSXJEVkk",
        "1_ee_0u7vcNLOfNLegJRHmolfH5ICW-XS", "0B7EVK8r0v71pZjFTYXZWM3FlRnM",
    ]


# -- bad input ----------------------------------------------------------------------------------------
def test_html_page_instead_of_label_file(source, tmp_path):
    (source / "list_attr_celeba.txt").write_bytes(HTML_PAGE)
    with pytest.raises(DownloadError, match=rf"{source}/list_attr_celeba\.txt: is an HTML page.*by hand"):
        acquire(str(source), tmp_path / "root")


def test_corrupt_zips(source, tmp_path):
    zip_path = source / "img_align_celeba.zip"
    data = zip_path.read_bytes()
    zip_path.write_bytes(data[: len(data) // 2])  # truncated: no central directory
    with pytest.raises(DownloadError, match=rf"{zip_path}: not a valid zip archive"):
        acquire(str(source), tmp_path / "a")

    zip_path.write_bytes(data)
    image = zip_entries(zip_path)["img_align_celeba/000005.jpg"]
    at = data.find(image) + len(image) // 2
    zip_path.write_bytes(data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:])  # a flipped byte: bad CRC
    with pytest.raises(DownloadError, match=r"corrupt zip: entry 'img_align_celeba/000005\.jpg'"):
        acquire(str(source), tmp_path / "b")
    assert not (tmp_path / "b" / "celeba" / "img_align_celeba").exists()


@pytest.mark.parametrize("bad_name", ["../escaped.jpg", "img_align_celeba/../../escaped.jpg", "/tmp/escaped.jpg"])
def test_unsafe_zip_entries_are_refused(source, tmp_path, bad_name):
    zip_path = source / "img_align_celeba.zip"
    entries = zip_entries(zip_path)
    rewrite_zip(zip_path, {**entries, bad_name: b"x"})
    with pytest.raises(DownloadError, match=rf"refusing entry '{bad_name}'"):
        acquire(str(source), tmp_path / "root")
    assert not (tmp_path / "escaped.jpg").exists() and not (tmp_path / "root" / "escaped.jpg").exists()
    assert not (tmp_path / "root" / "celeba" / "img_align_celeba").exists()


def test_images_missing_from_the_zip(source, tmp_path):
    zip_path = source / "img_align_celeba.zip"
    entries = zip_entries(zip_path)
    for k in (3, 9, 17):
        del entries[f"img_align_celeba/{k:06d}.jpg"]
    rewrite_zip(zip_path, entries)
    with pytest.raises(DownloadError) as info:
        acquire(str(source), tmp_path / "root")
    message = str(info.value)
    assert str(zip_path) in message and "3 image(s) listed in list_attr_celeba.txt are not in it" in message
    assert "000003.jpg, 000009.jpg, 000017.jpg" in message


def test_images_outside_the_official_folder(source, tmp_path):
    zip_path = source / "img_align_celeba.zip"
    rewrite_zip(zip_path, {name.replace("img_align_celeba/", "images/"): data
                           for name, data in zip_entries(zip_path).items()})
    with pytest.raises(DownloadError, match=r"no images under img_align_celeba/"):
        acquire(str(source), tmp_path / "root")


def test_partition_file_must_list_the_same_images(source, tmp_path):
    path = source / "list_eval_partition.txt"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-2]))
    with pytest.raises(DownloadError, match=r"list_eval_partition\.txt: does not list the same images .* 2 missing"):
        acquire(str(source), tmp_path / "root")


def test_label_errors_name_the_source_file(source, tmp_path):
    path = source / "list_attr_celeba.txt"
    lines = path.read_bytes().split(b"\r\n")
    lines[2] += b"  1"  # 41 values on line 3
    path.write_bytes(b"\r\n".join(lines))
    with serve(source) as url, pytest.raises(DownloadError) as info:
        acquire(url, tmp_path / "root")
    assert f"{url}list_attr_celeba.txt, line 3:" in str(info.value)
    assert ".staging" not in str(info.value)


def test_official_files_are_checked_against_official_md5s(source, tmp_path, monkeypatch):
    # Pretend the synthetic set is the full official one: its md5s are then wrong.
    monkeypatch.setattr(download, "OFFICIAL_COUNT", 120)
    actual = hashlib.md5((source / "list_attr_celeba.txt").read_bytes()).hexdigest()
    with pytest.raises(DownloadError) as info:
        acquire(str(source), tmp_path / "a")
    message = str(info.value)
    assert "list_attr_celeba.txt: checksum mismatch" in message
    assert "75e246fa4810816ffd6ee81facbd244c" in message and actual in message

    official = {name: hashlib.md5((source / name).read_bytes()).hexdigest()
                for name in (*LABEL_FILES, "img_align_celeba.zip")}
    monkeypatch.setattr(download, "OFFICIAL_MD5", official)
    assert acquire(str(source), tmp_path / "b")["official"] is True

    monkeypatch.setattr(download, "OFFICIAL_MD5", {**official, "img_align_celeba.zip": "0" * 32})
    with pytest.raises(DownloadError, match=r"img_align_celeba\.zip: checksum mismatch: md5 expected 0{32}"):
        acquire(str(source), tmp_path / "c")


def test_bad_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no such folder; give a folder, an http\(s\) URL or 'gdrive'"):
        acquire(str(tmp_path / "nowhere"), tmp_path / "root")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DownloadError, match=r"empty/list_attr_celeba\.txt: not found"):
        acquire(str(tmp_path / "empty"), tmp_path / "root")


# -- the command line ------------------------------------------------------------------------
def test_cli_synth_then_download_twice(tmp_path, capsys):
    a, b = tmp_path / "A", tmp_path / "B"
    assert cli.main(["synth", "--out", str(a), "--n", "300", "--seed", "1"]) == 0
    capsys.readouterr()
    assert cli.main(["download", "--source", str(a), "--root", str(b)]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["status"] == "downloaded"
    jpegs = list((b / "celeba" / "img_align_celeba").glob("*.jpg"))
    assert len(jpegs) == 300 and all(p.read_bytes()[:2] == b"\xff\xd8" for p in jpegs[:20])
    assert cli.main(["download", "--source", str(a), "--root", str(b)]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "up-to-date"

    (a / "img_align_celeba.zip").write_bytes(b"garbage")
    assert cli.main(["download", "--source", str(a), "--root", str(tmp_path / "C")]) == 2
    assert "faceattr download: error:" in capsys.readouterr().err


# -- real data ------------------------------------------------------------------------------------------
@pytest.mark.realdata
def test_real_sample(celeba_sample, tmp_path):
    root = tmp_path / "root"
    result = acquire(str(celeba_sample), root)
    assert result["status"] == "downloaded" and result["counts"]["images"] == 4560
    frame = read_attributes(root / "celeba" / "list_attr_celeba.txt")
    lines = (celeba_sample / "list_attr_celeba.txt").read_text().splitlines()
    rows = {line.split()[0]: [int(v) for v in line.split()[1:]] for line in lines[2:] if line.strip()}
    assert list(frame.index) == list(rows) and int(lines[0]) == len(rows) == 4560
    np.testing.assert_array_equal(frame.to_numpy(), np.array(list(rows.values())))
    assert set(image_names(root)) == set(rows)
    with zipfile.ZipFile(celeba_sample / "img_align_celeba.zip") as archive:
        for name in list(rows)[::900]:
            extracted = root / "celeba" / "img_align_celeba" / name
            assert extracted.read_bytes() == archive.read(f"img_align_celeba/{name}")
    assert acquire(str(celeba_sample), root)["status"] == "up-to-date"


def test_a_full_disk_is_not_a_corrupt_zip(source, tmp_path, monkeypatch):
    """Extracting onto a full disk (here /dev/full's ENOSPC) says so and names the file, and nothing is trusted."""
    import builtins

    from faceattr.fsutil import NoSpaceError

    root = tmp_path / "root"
    real_open = builtins.open

    def full_disk(file, mode="r", *args, **kwargs):
        if "w" in mode and "img_align_celeba" in str(file):
            return real_open("/dev/full", mode, *args, **kwargs)
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(download, "open", full_disk, raising=False)
    with pytest.raises(NoSpaceError, match=r"img_align_celeba/\S+\.jpg: no space left on device"):
        acquire(str(source), root)
    monkeypatch.undo()
    assert not (root / "celeba" / "manifest.json").exists()
    assert acquire(str(source), root)["status"] == "downloaded"  # space freed: the next run completes
