"""faceattr.data.cache: decode once, reuse, never trust a partial cache, write in bounded chunks."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from faceattr.data.cache import (
    CacheError,
    build_cache,
    build_split_cache,
    cache_paths,
    cache_problem,
    decoded_chunks,
    open_cache,
    write_npy_chunks,
)
from faceattr.run.config import RunConfig
from faceattr.data.images import ImageError, open_image
from faceattr.data.layout import images_dir


@pytest.fixture(scope="module")
def run(tmp_path_factory, synth_root) -> tuple[Path, RunConfig]:
    """A run folder over the 300-image synthetic root, cache built once."""
    from faceattr.data.split import make_split

    run_dir = tmp_path_factory.mktemp("cache-run") / "run"
    config = RunConfig(root=str(synth_root), num_workers=0, device="cpu")
    config.save(run_dir)
    make_split(synth_root, "random", 0, run_dir)
    return run_dir, config


def _ids(run_dir: Path, split: str) -> list[str]:
    from faceattr.data.split import read_split

    split_of = read_split(run_dir)
    return split_of.index[split_of.to_numpy() == split].tolist()


def test_build_cache_decodes_each_split_to_the_eval_pixels(run):
    run_dir, config = run
    result = build_cache(run_dir)
    assert set(result["splits"]) == {"train", "val", "test"}
    assert sum(part["images"] for part in result["splits"].values()) == 300
    for split in ("train", "val", "test"):
        ids = _ids(run_dir, split)
        array = open_cache(run_dir, split, ids, config.root)
        assert array.shape == (len(ids), 218, 178, 3) and array.dtype == np.uint8
        index = json.loads(cache_paths(run_dir, split)[1].read_text())
        assert index["image_ids"] == ids  # split.csv order
        for position in (0, len(ids) // 2, len(ids) - 1):
            expected = np.asarray(open_image(images_dir(config.root) / ids[position]))
            assert np.array_equal(array[position], expected), f"{split} image {ids[position]} differs"
    assert result["bytes"] == 300 * 218 * 178 * 3 + 3 * 128  # pixels + one .npy header per split


def test_a_complete_cache_is_reused_untouched(run):
    run_dir, _ = run
    build_cache(run_dir)
    npy = cache_paths(run_dir, "train")[0]
    before = npy.stat().st_mtime_ns
    again = build_cache(run_dir)
    assert {part["status"] for part in again["splits"].values()} == {"up-to-date"}
    assert npy.stat().st_mtime_ns == before


def test_a_partial_or_foreign_cache_is_never_trusted(tmp_path, synth_root):
    from faceattr.data.split import make_split

    run_dir = tmp_path / "run"
    RunConfig(root=str(synth_root), num_workers=0).save(run_dir)
    make_split(synth_root, "random", 0, run_dir)
    ids = _ids(run_dir, "val")
    npy, index = cache_paths(run_dir, "val")

    # Nothing built yet; then a leftover temporary file from an interrupted build.
    assert "no index" in cache_problem(run_dir, "val", ids, synth_root)
    npy.parent.mkdir(parents=True)
    (npy.parent / ".val.npy.tmp-abc").write_bytes(b"\x93NUMPY half")
    with pytest.raises(CacheError, match="val.json"):
        open_cache(run_dir, "val", ids, synth_root)
    assert build_split_cache(run_dir, "val", ids, synth_root)["status"] == "built"
    assert cache_problem(run_dir, "val", ids, synth_root) is None

    # An .npy cut short (disk full, copied halfway): detected by its size, rebuilt.
    with open(npy, "r+b") as handle:
        handle.truncate(npy.stat().st_size - 1000)
    assert "bytes" in cache_problem(run_dir, "val", ids, synth_root)
    assert build_split_cache(run_dir, "val", ids, synth_root)["status"] == "built"

    # The index of another split or dataset root does not match.
    assert "ids" in cache_problem(run_dir, "val", ids[::-1], synth_root)
    assert "images" in cache_problem(run_dir, "val", ids[:-1], synth_root)
    assert "root" in cache_problem(run_dir, "val", ids, tmp_path / "elsewhere")

    # An .npy without its index (the build stopped before writing it).
    index.unlink()
    assert cache_problem(run_dir, "val", ids, synth_root) is not None
    assert build_split_cache(run_dir, "val", ids, synth_root)["status"] == "built"


def test_an_interrupted_write_leaves_nothing(tmp_path):
    def chunks():
        yield np.zeros((4, 2, 2, 3), np.uint8)
        raise OSError("disk full")

    target = tmp_path / "x.npy"
    with pytest.raises(OSError, match="disk full"):
        write_npy_chunks(target, (8, 2, 2, 3), chunks())
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="4 rows written, 8 announced"):
        write_npy_chunks(target, (8, 2, 2, 3), iter([np.zeros((4, 2, 2, 3), np.uint8)]))
    with pytest.raises(ValueError, match="does not fit"):
        write_npy_chunks(target, (8, 2, 2, 3), iter([np.zeros((4, 2, 3, 3), np.uint8)]))
    assert list(tmp_path.iterdir()) == []


def test_the_writer_holds_one_chunk_at_a_time(tmp_path):
    """Memory is bounded by construction: chunk k+1 is produced only after chunk k is on disk."""
    shape, chunk_rows, n_chunks = (2, 5, 7, 3), 2, 6
    row_bytes = 5 * 7 * 3
    target = tmp_path / "big.npy"
    written_before = []

    def chunks():
        for k in range(n_chunks):
            (tmp,) = tmp_path.glob(".big.npy.tmp-*")
            written_before.append(tmp.stat().st_size)
            yield np.full((chunk_rows, 5, 7, 3), k, np.uint8)

    size = write_npy_chunks(target, (chunk_rows * n_chunks, *shape[1:]), chunks())
    header = size - chunk_rows * n_chunks * row_bytes
    assert written_before == [header + k * chunk_rows * row_bytes for k in range(n_chunks)]
    array = np.load(target, mmap_mode="r")
    assert array.shape == (12, 5, 7, 3)
    assert [int(array[i, 0, 0, 0]) for i in range(0, 12, 2)] == list(range(n_chunks))


def test_decoding_comes_in_chunks_of_bounded_size(synth_root):
    ids = sorted(p.name for p in images_dir(synth_root).iterdir())[:50]
    sizes = [len(chunk) for chunk in decoded_chunks(images_dir(synth_root), ids, chunk_images=16)]
    assert sizes == [16, 16, 16, 2]


def test_an_unreadable_image_names_the_file(tmp_path, synth_root):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "000001.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ImageError, match="000001.jpg"):
        list(decoded_chunks(folder, ["000001.jpg"], chunk_images=4))


def test_images_of_another_size_are_resized_as_eval_does(tmp_path):
    from PIL import Image

    from faceattr.data.transforms import ResizeIfNeeded

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (300, 250, 3), dtype=np.uint8)).save(folder / "big.png")
    (chunk,) = decoded_chunks(folder, ["big.png"])
    expected = np.asarray(ResizeIfNeeded((178, 218))(open_image(folder / "big.png")))
    assert chunk.shape == (1, 218, 178, 3) and np.array_equal(chunk[0], expected)


def test_upload_copies_the_array_exactly():
    import torch

    from faceattr.data.cache import upload

    array = np.random.default_rng(5).integers(0, 256, (23, 4, 5, 3), dtype=np.uint8)
    assert np.array_equal(upload(array, torch.device("cpu")).numpy(), array)


@pytest.mark.cuda
def test_upload_to_the_gpu_through_pinned_buffers_copies_the_array_exactly():
    """Chunks that do not divide the array, parts of one or two rows per thread, both buffers reused."""
    import torch

    from faceattr.data.cache import upload

    array = np.random.default_rng(6).integers(0, 256, (23, 4, 5, 3), dtype=np.uint8)
    on_gpu = upload(array, torch.device("cuda"), chunk_images=5, threads=3)
    assert on_gpu.is_cuda and np.array_equal(on_gpu.cpu().numpy(), array)
