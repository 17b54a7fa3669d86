"""faceattr.data.images and faceattr.engine.predict: every kind of input file, CSV format, errors file, zip input."""
from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from faceattr.run.config import RunConfig
from faceattr.model import export_model
from faceattr.data.images import IMAGE_SIZE, ImageError, open_image
from faceattr.attributes import ATTRIBUTES
from faceattr.model import build_model
from faceattr.engine.predict import predict

W, H = IMAGE_SIZE
ORIENTATION = 0x0112  # the EXIF tag


# -- input files ------------------------------------------------------------------------------
def _face(seed: int, size: tuple[int, int] = IMAGE_SIZE) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, size[0] * size[1] * 3).reshape(size[1], size[0], 3)
    noise = rng.integers(0, 60, (size[1], size[0], 3))
    return Image.fromarray(((base + noise) % 256).astype(np.uint8))


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _rotated_by_exif(upright: Image.Image, fmt: str) -> bytes:
    """The image stored on its side with an EXIF tag (6: rotate 90 clockwise to view), as phones do."""
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    return _encode(upright.transpose(Image.Transpose.ROTATE_90), fmt, exif=exif)


def _png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose header declares 900 megapixels: PIL must refuse it before decoding."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")


def _input_files() -> dict[str, bytes]:
    """Every kind of file a private folder may hold, by relative name."""
    rgba = _face(4).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(IMAGE_SIZE))
    palette = _face(5).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    palette.info["transparency"] = 0
    gray16 = Image.fromarray((np.arange(W * H, dtype=np.uint16).reshape(H, W) * 7) % 65535)  # uint16 2-D: mode I;16
    good_jpeg = _encode(_face(9), "JPEG", quality=90)
    return {
        "a.jpg": _encode(_face(1), "JPEG", quality=90),
        "b.png": _encode(_face(2, (100, 123)), "PNG"),  # another size: resized
        "gray.jpg": _encode(_face(3).convert("L"), "JPEG"),
        "rgba.png": _encode(rgba, "PNG"),
        "palette.png": _encode(palette, "PNG"),
        "gray16.png": _encode(gray16, "PNG"),
        "cmyk.jpg": _encode(_face(6).convert("CMYK"), "JPEG"),
        "rotated.jpg": _rotated_by_exif(_face(7), "JPEG"),
        "sub/c.jpg": _encode(_face(8), "JPEG"),
        "corrupt.jpg": good_jpeg[: len(good_jpeg) // 2],  # a truncated download
        "notes.txt": b"not an image\n",
        "bomb.png": _png_bomb(),
        # Ignored: hidden files and folders, macOS resource forks.
        ".DS_Store": b"\0\0\0\1Bud1",
        ".cache/x.jpg": good_jpeg,
        "__MACOSX/._a.jpg": b"\0\5\26\7",
    }


READABLE = ["a.jpg", "b.png", "cmyk.jpg", "gray.jpg", "gray16.png", "palette.png", "rgba.png", "rotated.jpg",
            "sub/c.jpg"]
UNREADABLE = ["bomb.png", "corrupt.jpg", "notes.txt"]


def _write_folder(folder: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def _write_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("images/", b"")  # a folder entry, not a file
        for name, data in files.items():
            archive.writestr(name, data)
    return path


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model("resnet18", "none", 6)
    thresholds = torch.linspace(-0.2, 0.2, 40)  # non-zero, so the test sees them applied
    path = tmp_path_factory.mktemp("model") / "model.pt"
    config = RunConfig(arch="resnet18", weights="none")
    return export_model(path, model.state_dict(), config, epoch=2, thresholds=thresholds, run="test-run",
                        val_mean_accuracy=0.5)


# -- open_image -------------------------------------------------------------------------------
def test_open_image_converts_every_mode_to_upright_rgb():
    files = _input_files()
    for name in READABLE:
        image = open_image(io.BytesIO(files[name]), name=name)
        assert image.mode == "RGB", name
        assert image.size == ((100, 123) if name == "b.png" else IMAGE_SIZE), name


def test_open_image_pixels_after_conversion(tmp_path):
    # EXIF orientation: a lossless PNG on its side comes back pixel-identical to the upright image.
    upright = _face(11)
    assert np.array_equal(np.asarray(open_image(io.BytesIO(_rotated_by_exif(upright, "PNG")))), np.asarray(upright))
    # Transparent pixels land on white; opaque ones keep their colour.
    rgba = Image.new("RGBA", (2, 1), (10, 20, 30, 255))
    rgba.putpixel((1, 0), (10, 20, 30, 0))
    assert np.asarray(open_image(io.BytesIO(_encode(rgba, "PNG")))).tolist() == [[[10, 20, 30], [255, 255, 255]]]
    # 16-bit grayscale is rescaled, not clipped at 255.
    gray16 = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16))  # uint16 2-D: mode I;16
    assert np.asarray(open_image(io.BytesIO(_encode(gray16, "PNG"))))[0, :, 0].tolist() == [0, 128, 255]
    # Grayscale becomes three equal channels; a path works as well as a file object.
    path = tmp_path / "g.png"
    Image.new("L", (3, 3), 77).save(path)
    assert np.asarray(open_image(path)).tolist() == [[[77, 77, 77]] * 3] * 3


def test_open_image_errors_give_the_name_and_reason(tmp_path):
    files = _input_files()
    cases = {
        "corrupt.jpg": "corrupt.jpg: unreadable image .*truncated",
        "notes.txt": "notes.txt: not an image",
        "bomb.png": "bomb.png: refused as a decompression bomb",
    }
    for name, pattern in cases.items():
        with pytest.raises(ImageError, match=pattern):
            open_image(io.BytesIO(files[name]), name=name)
    with pytest.raises(ImageError, match="missing.jpg: file not found"):
        open_image(tmp_path / "missing.jpg", name="missing.jpg")
    assert issubclass(ImageError, ValueError)


# -- predict ----------------------------------------------------------------------------------
def _expected_scores(model_file: Path, image: Image.Image) -> np.ndarray:
    from faceattr.data.transforms import eval_transform
    from faceattr.model import load_model_file

    model, _ = load_model_file(model_file)
    with torch.no_grad():
        return model(eval_transform()(image).unsqueeze(0))[0].numpy()


def test_predict_folder_writes_rows_and_errors(tmp_path, model_file):
    from faceattr.cli import main

    folder = _write_folder(tmp_path / "private", _input_files())
    out = tmp_path / "out" / "preds.csv"
    # Through the command line. On the CPU: the scores are compared with fp32
    # CPU ones at 1e-4 (on CUDA predict runs bf16 with nvjpeg; test_fast_path's CUDA test covers that).
    assert main(["predict", "--model", str(model_file), "--images", str(folder), "--out", str(out),
                 "--scores", "--batch-size", "4", "--device", "cpu"]) == 0

    table = pd.read_csv(out, dtype={"image_id": str})
    assert list(table.columns) == ["image_id", *ATTRIBUTES, *(f"{n}_score" for n in ATTRIBUTES)]
    assert table["image_id"].tolist() == READABLE  # sorted by name, nested files by relative path
    labels = table[list(ATTRIBUTES)].to_numpy()
    assert set(np.unique(labels)) <= {-1, 1}

    scores = table[[f"{n}_score" for n in ATTRIBUTES]].to_numpy()
    thresholds = np.linspace(-0.2, 0.2, 40)
    clear = np.abs(scores - thresholds) > 1e-5  # away from rounding in the CSV
    assert np.array_equal(labels[clear], np.where(scores >= thresholds, 1, -1)[clear])
    expected = _expected_scores(model_file, open_image(folder / "a.jpg"))
    assert np.allclose(scores[0], expected, atol=1e-4)
    # The EXIF-rotated photo is scored upright: as its upright counterpart, give or take JPEG noise.
    upright = _expected_scores(model_file, open_image(io.BytesIO(_encode(_face(7), "JPEG"))))
    sideways = _expected_scores(model_file, _face(7).transpose(Image.Transpose.ROTATE_90).resize(IMAGE_SIZE))
    rotated_row = scores[READABLE.index("rotated.jpg")]
    assert np.abs(rotated_row - upright).mean() < np.abs(rotated_row - sideways).mean()

    errors = pd.read_csv(out.with_name("preds.errors.csv"))
    assert list(errors.columns) == ["image_id", "reason"]
    assert errors["image_id"].tolist() == UNREADABLE
    reasons = dict(zip(errors["image_id"], errors["reason"]))
    assert "decompression bomb" in reasons["bomb.png"]
    assert "truncated" in reasons["corrupt.jpg"]
    assert "not an image" in reasons["notes.txt"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["preds.csv", "preds.errors.csv"]  # no temp files


def test_predict_counts_add_up_and_zip_matches_folder(tmp_path, model_file):
    files = _input_files()
    folder = _write_folder(tmp_path / "private", files)
    archive = _write_zip(tmp_path / "private.zip", files)

    from_folder = predict(model_file, folder, tmp_path / "folder.csv", batch_size=4, device="cpu")
    from_zip = predict(model_file, archive, tmp_path / "zip.csv", batch_size=4, device="cpu")
    for result in (from_folder, from_zip):
        assert (result["images"], result["rows"], result["errors"]) == (12, 9, 3)
        assert result["rows"] + result["errors"] == result["images"]
    assert (tmp_path / "folder.csv").read_text() == (tmp_path / "zip.csv").read_text()
    assert (tmp_path / "folder.errors.csv").read_text() == (tmp_path / "zip.errors.csv").read_text()
    assert from_zip["errors_csv"] == str(tmp_path / "zip.errors.csv")
    # Without --scores: image_id and the 40 labels only.
    assert (tmp_path / "zip.csv").read_text().splitlines()[0] == ",".join(["image_id", *ATTRIBUTES])


def test_output_inside_the_input_folder_is_refused(tmp_path, model_file):
    folder = _write_folder(tmp_path / "private", {"a.jpg": _input_files()["a.jpg"]})
    with pytest.raises(ValueError, match="preds.csv: inside the images folder"):
        predict(model_file, folder, folder / "preds.csv", device="cpu")
    assert sorted(path.name for path in folder.iterdir()) == ["a.jpg"]


@pytest.mark.parametrize("entry", ["../escape.jpg", "/etc/abs.jpg", "C:/windows.jpg", "ok/../../up.jpg"])
def test_zip_entries_with_absolute_paths_or_dotdot_are_refused(tmp_path, model_file, entry):
    archive = _write_zip(tmp_path / "evil.zip", {"a.jpg": _input_files()["a.jpg"], entry: b"x"})
    with pytest.raises(ValueError, match="evil.zip: refused: entry .* absolute path or '..'"):
        predict(model_file, archive, tmp_path / "out.csv", device="cpu")
    assert not (tmp_path / "out.csv").exists()


def test_bad_inputs_are_clear_errors(tmp_path, model_file):
    from faceattr.checkpoint import save_checkpoint

    with pytest.raises(FileNotFoundError, match="nowhere: no such folder or zip"):
        predict(model_file, tmp_path / "nowhere", tmp_path / "out.csv", device="cpu")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".hidden.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match="empty: no files to predict"):
        predict(model_file, empty, tmp_path / "out.csv", device="cpu")
    not_zip = tmp_path / "images.tar"
    not_zip.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="images.tar: neither a folder nor a zip"):
        predict(model_file, not_zip, tmp_path / "out.csv", device="cpu")
    training_checkpoint = save_checkpoint({"model": {"w": torch.ones(1)}, "epoch": 1}, tmp_path / "epoch_1.pt")
    with pytest.raises(ValueError, match="epoch_1.pt: not an exported model file; missing key"):
        predict(training_checkpoint, empty, tmp_path / "out.csv", device="cpu")
    with pytest.raises(ValueError, match="batch_size"):
        predict(model_file, empty, tmp_path / "out.csv", batch_size=0, device="cpu")
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.realdata
def test_predict_real_celeba_images_from_a_zip(celeba_sample, tmp_path, model_file):
    # 24 genuine CelebA JPEGs, packaged as the official zip is (inside img_align_celeba/).
    with zipfile.ZipFile(celeba_sample / "img_align_celeba.zip") as source:
        names = sorted(n for n in source.namelist() if n.endswith(".jpg"))[:24]
        with zipfile.ZipFile(tmp_path / "real.zip", "w") as target:
            for name in names:
                target.writestr(name, source.read(name))
        first = open_image(io.BytesIO(source.read(names[0])), name=names[0])
    assert first.size == IMAGE_SIZE and first.mode == "RGB"

    result = predict(model_file, tmp_path / "real.zip", tmp_path / "real.csv", batch_size=8, device="cpu")
    assert (result["images"], result["rows"], result["errors"]) == (24, 24, 0)
    table = pd.read_csv(tmp_path / "real.csv", dtype={"image_id": str})
    assert table["image_id"].tolist() == names
    assert set(np.unique(table[list(ATTRIBUTES)].to_numpy())) <= {-1, 1}


# -- the device-decode path (nvjpeg on CUDA), exercised on the CPU ------------------------------------
def _jpeg_folder(folder: Path, n: int) -> Path:
    """n plain JPEGs, a truncated one and a text file (two error rows)."""
    folder.mkdir()
    for i in range(n):
        (folder / f"{i:04d}.jpg").write_bytes(_encode(_face(100 + i % 7), "JPEG", quality=90))
    whole = (folder / "0000.jpg").read_bytes()
    (folder / "zz_truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (folder / "zz_notes.txt").write_text("not an image")
    return folder


def _device_decode_on_cpu(monkeypatch, fail=None) -> list[int]:
    """Make predict take the device-decode path on the CPU; `fail(files)` may return an exception to raise.

    Returns the list that receives the number of files of each decode_jpeg call.
    """
    import faceattr.data.jpeg
    import faceattr.engine.predict as predict_module

    monkeypatch.setattr(predict_module, "DEVICE_DECODE", ("cpu",))
    real, calls = faceattr.data.jpeg.decode_jpeg, []

    def decode_jpeg(input, *args, **kwargs):
        files = input if isinstance(input, list) else [input]
        calls.append(len(files))
        error = fail([f.numpy().tobytes() for f in files]) if fail else None
        if error is not None:
            raise error
        return real(input, *args, **kwargs)

    monkeypatch.setattr(faceattr.data.jpeg, "decode_jpeg", decode_jpeg)
    return calls


def _outputs(out: Path) -> tuple[str, str]:
    return out.read_text(), out.with_name(out.stem + ".errors.csv").read_text()


def test_predict_with_many_loader_workers_and_a_low_open_file_limit(tmp_path, model_file):
    """512 raw JPEGs per batch from 2 workers under `ulimit -n 128`: one packed tensor per batch, not one per file.

    (One tensor per file costs a file descriptor each: the workers died with EMFILE and predict hung.)
    """
    import subprocess
    import sys
    import textwrap

    folder = _jpeg_folder(tmp_path / "many", 600)
    script = textwrap.dedent(f"""
        import resource, sys, torch
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        import faceattr.engine.predict as predict_module
        predict_module.DEVICE_DECODE = ("cpu",)
        predict_module.resolve_num_workers = lambda n: 2  # two worker processes on any machine
        # The model is not what is tested: zeros keep 600 images fast on two cores.
        predict_module.queue_scores = lambda model, images, device, pad_to=None: torch.zeros(len(images), 40)
        result = predict_module.predict({str(model_file)!r}, {str(folder)!r}, {str(tmp_path / "out.csv")!r},
                                        batch_size=512, device="cpu")
        print(result["images"], result["rows"], result["errors"])
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["602", "600", "2"]


def test_a_file_the_device_cannot_decode_is_logged_and_read_by_pil(tmp_path, model_file, monkeypatch, caplog):
    folder = _jpeg_folder(tmp_path / "images", 6)
    odd = (folder / "0003.jpg").read_bytes()
    (folder / "0003.jpg").write_bytes(odd + b"\0")  # a byte after the end marker: plain, and unique
    odd = (folder / "0003.jpg").read_bytes()
    predict(model_file, folder, tmp_path / "pil.csv", scores=True, batch_size=8, device="cpu")

    cause = RuntimeError("Error while decoding JPEG images: Failed to get image info: 6")
    calls = _device_decode_on_cpu(monkeypatch, lambda files: cause if odd in files else None)
    with caplog.at_level("WARNING"):
        result = predict(model_file, folder, tmp_path / "device.csv", scores=True, batch_size=8, device="cpu")
    assert calls == [6, 1, 1, 1, 1, 1, 1]  # the batch, then file by file
    assert (result["rows"], result["errors"]) == (6, 2)
    pil_table = pd.read_csv(tmp_path / "pil.csv", index_col="image_id")
    device_table = pd.read_csv(tmp_path / "device.csv", index_col="image_id")
    assert device_table.index.tolist() == pil_table.index.tolist()
    assert np.allclose(device_table.to_numpy(), pil_table.to_numpy(), atol=1e-4)
    assert _outputs(tmp_path / "device.csv")[1] == _outputs(tmp_path / "pil.csv")[1]  # the error rows, exactly
    messages = [r.getMessage() for r in caplog.records if r.name == "faceattr.data.jpeg"]
    assert any("batch of 6" in m and "Failed to get image info: 6" in m for m in messages), messages
    assert any("1 file(s)" in m and "through PIL" in m for m in messages), messages


@pytest.mark.parametrize("error", [torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   RuntimeError("Error while decoding JPEG images: CUDA out of memory")])
def test_out_of_memory_while_decoding_is_raised(tmp_path, model_file, monkeypatch, error):
    folder = _jpeg_folder(tmp_path / "images", 3)
    _device_decode_on_cpu(monkeypatch, lambda files: error)
    with pytest.raises(RuntimeError, match="out of memory"):
        predict(model_file, folder, tmp_path / "out.csv", batch_size=2, device="cpu")
    assert not (tmp_path / "out.csv").exists()


def test_a_device_problem_turns_device_decoding_off_for_the_run(tmp_path, model_file, monkeypatch, caplog):
    folder = _jpeg_folder(tmp_path / "images", 7)
    predict(model_file, folder, tmp_path / "pil.csv", batch_size=3, device="cpu")
    calls = _device_decode_on_cpu(
        monkeypatch, lambda files: RuntimeError("decode_jpegs_cuda: torchvision not compiled with nvJPEG support"))
    with caplog.at_level("WARNING"):
        result = predict(model_file, folder, tmp_path / "device.csv", batch_size=3, device="cpu")
    assert calls == [3]  # three batches of JPEGs; only the first tried the device
    assert (result["rows"], result["errors"]) == (7, 2)
    assert _outputs(tmp_path / "device.csv") == _outputs(tmp_path / "pil.csv")
    assert any("turned off" in r.getMessage() and "not compiled with nvJPEG" in r.getMessage() for r in caplog.records)


def test_a_device_that_decodes_nothing_pil_can_read_is_turned_off(tmp_path, model_file, monkeypatch, caplog):
    """An unknown error on every file, though PIL reads them all: the device decoder, not the files, is at fault."""
    folder = _jpeg_folder(tmp_path / "images", 8)
    calls = _device_decode_on_cpu(monkeypatch, lambda files: RuntimeError("an error nobody has seen before"))
    with caplog.at_level("WARNING"):
        result = predict(model_file, folder, tmp_path / "device.csv", batch_size=4, device="cpu")
    assert calls == [4, 1, 1, 1, 1]  # the first batch, file by file; then never again
    assert (result["rows"], result["errors"]) == (8, 2)
    assert any("turned off" in r.getMessage() and "decoded none of a batch of 4" in r.getMessage()
               for r in caplog.records)
