"""The fast data path: tensor augmentation agrees with the PIL reference, the cache loader feeds training."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision import transforms
from torchvision.transforms import functional as TF

from faceattr.run.config import RunConfig
from faceattr.data.loaders import (
    CachedLoader,
    load_split_frame,
    make_loader,
)
from faceattr.data.transforms import (
    AUGMENT_SIZE,
    CROP_LEFT_MAX,
    CROP_TOP_MAX,
    augment_batch,
    augment_params,
    eval_transform,
    normalise_batch,
)
from faceattr.data.images import MEAN, STD
from faceattr.attributes import ATTRIBUTES

CPU = torch.device("cpu")
# One grey level (of 255) after normalisation, the largest rounding difference PIL's fixed-point
# resize can have from torch's.
ONE_LEVEL = 1.01 / 255 / min(STD)


def _images(n: int, seed: int = 0) -> np.ndarray:
    """N x 218 x 178 x 3 uint8: gradients plus noise, so flips, crops and resizes all show."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, 178)[None, :]
    y = np.linspace(0, 255, 218)[:, None]
    base = np.stack([x + 0 * y, y + 0 * x, (x + y) / 2], axis=-1)
    return np.stack([np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8) for _ in range(n)])


def _pil_augment(pixels: np.ndarray, flip: bool, top: int, left: int) -> torch.Tensor:
    """train_transform's steps with fixed random choices: flip, resize 220x270, crop, normalise."""
    image = Image.fromarray(pixels)
    if flip:
        image = TF.hflip(image)
    aug_width, aug_height = AUGMENT_SIZE
    image = TF.resize(image, [aug_height, aug_width])
    image = TF.crop(image, top, left, 218, 178)
    return TF.normalize(TF.to_tensor(image), MEAN, STD)


# -- tensor augmentation vs PIL ------------------------------------------------------------------
def test_augment_batch_matches_the_pil_transform_for_the_same_choices():
    pixels = _images(8)
    flip = torch.tensor([0, 1, 0, 1, 1, 0, 0, 1], dtype=torch.bool)
    top = torch.tensor([0, CROP_TOP_MAX, 10, 3, 40, CROP_TOP_MAX, 0, 25])
    left = torch.tensor([0, CROP_LEFT_MAX, 5, 41, 0, 0, CROP_LEFT_MAX, 20])
    out = augment_batch(torch.from_numpy(pixels), flip, top, left)
    assert out.shape == (8, 3, 218, 178) and out.dtype == torch.float32
    for i in range(8):
        expected = _pil_augment(pixels[i], bool(flip[i]), int(top[i]), int(left[i]))
        difference = (out[i] - expected).abs()
        assert difference.max() <= ONE_LEVEL, f"image {i}: {difference.max():.4f}"
        assert difference.mean() <= 0.01 * ONE_LEVEL  # rounding only, nearly everywhere exact
        # A wrong flip or offset moves the gradient: far beyond rounding.
        wrong = _pil_augment(pixels[i], not bool(flip[i]), int(top[i]), int(left[i]))
        assert (out[i] - wrong).abs().mean() > 50 * ONE_LEVEL


def test_augment_draws_flips_and_crops_like_the_pil_transform():
    generator = torch.Generator().manual_seed(0)
    n = 20_000
    flip, top, left = augment_params(n, generator)
    assert 0.48 < flip.float().mean().item() < 0.52
    # RandomCrop's offsets: uniform over every window inside the 220x270 image.
    image = Image.new("RGB", AUGMENT_SIZE)
    reference = np.array([transforms.RandomCrop.get_params(image, (218, 178))[:2] for _ in range(2000)])
    assert reference[:, 0].min() == top.min().item() == 0 and reference[:, 0].max() == top.max().item() == 52
    assert reference[:, 1].min() == left.min().item() == 0 and reference[:, 1].max() == left.max().item() == 42
    for values, size in ((top, CROP_TOP_MAX + 1), (left, CROP_LEFT_MAX + 1)):
        counts = torch.bincount(values, minlength=size).float()
        expected = n / size
        assert (counts - expected).abs().max() < 0.25 * expected  # > 4 standard deviations
    assert abs(np.corrcoef(top.numpy(), left.numpy())[0, 1]) < 0.05


def test_normalise_batch_equals_the_eval_transform():
    pixels = _images(3, seed=1)
    out = normalise_batch(torch.from_numpy(pixels))
    assert out.is_contiguous()
    for i in range(3):
        assert torch.allclose(out[i], eval_transform()(Image.fromarray(pixels[i])), atol=1e-5)


# -- the cache loader ---------------------------------------------------------------------------
def _random_model_file(path: Path) -> Path:
    """A model.pt of a seeded, untrained resnet18: scoring tests compare paths, not accuracy."""
    from faceattr.model import build_model, export_model

    torch.manual_seed(0)
    model = build_model("resnet18", weights="none")
    return export_model(path, model.state_dict(), RunConfig(arch="resnet18", weights="none"), epoch=1,
                        thresholds=np.zeros(len(ATTRIBUTES), np.float32), run="t", val_mean_accuracy=0.0)


def _cached_run(tmp_path_factory, root: Path) -> tuple[Path, RunConfig]:
    from faceattr.data.cache import build_cache
    from faceattr.data.split import make_split

    run_dir = tmp_path_factory.mktemp("fast-run") / "run"
    config = RunConfig(root=str(root), num_workers=0, device="cpu", batch_size=16, data_path="cache")
    config.save(run_dir)
    make_split(root, "random", 0, run_dir)
    build_cache(run_dir)
    return run_dir, config


@pytest.fixture(scope="module")
def run(tmp_path_factory, synth_root) -> tuple[Path, RunConfig]:
    return _cached_run(tmp_path_factory, synth_root)


@pytest.fixture(scope="module")
def learning_run(tmp_path_factory, synthetic_root) -> tuple[Path, RunConfig]:
    # 600 faces: the 300 of synth_root leave 60 held-out images, too few to measure learning on.
    return _cached_run(tmp_path_factory, synthetic_root(600, 1))


def test_data_path_auto_uses_the_cache_only_when_it_is_built(run, tmp_path, synth_root):
    from faceattr.data.split import make_split

    run_dir, config = run
    auto = config.replace(data_path="auto")
    assert isinstance(make_loader(run_dir, auto, "val", train=False, device=CPU), CachedLoader)
    assert not isinstance(make_loader(run_dir, auto.replace(data_path="pil"), "val", train=False, device=CPU),
                          CachedLoader)
    fresh = tmp_path / "fresh"
    auto.save(fresh)
    make_split(synth_root, "random", 0, fresh)
    assert isinstance(make_loader(fresh, auto, "val", train=False, device=CPU), torch.utils.data.DataLoader)
    # "cache" builds what it needs.
    loader = make_loader(fresh, config, "val", train=False, device=CPU)
    assert isinstance(loader, CachedLoader) and (fresh / "cache" / "val.json").is_file()


def test_a_loader_checks_the_cache_index_once(run, monkeypatch):
    """Checking the index hashes every image id: once per loader, not once per layer that opens it."""
    import faceattr.data.cache as cache

    run_dir, config = run
    checks = []
    real = cache.cache_problem
    monkeypatch.setattr(cache, "cache_problem", lambda *args: checks.append(args[1]) or real(*args))
    for data_path in ("auto", "cache"):
        checks.clear()
        assert isinstance(make_loader(run_dir, config.replace(data_path=data_path), "val", train=False, device=CPU),
                          CachedLoader)
        assert checks == ["val"], data_path


def test_eval_batches_equal_the_pil_loader(run):
    run_dir, config = run
    fast = make_loader(run_dir, config, "val", train=False, device=CPU)
    reference = make_loader(run_dir, config.replace(data_path="pil"), "val", train=False, device=CPU)
    pairs = list(zip(fast, reference))
    assert len(pairs) == len(reference) == len(fast)
    for (images, labels), (expected_images, expected_labels) in pairs:
        assert torch.allclose(images, expected_images, atol=1e-5)
        assert torch.equal(labels, expected_labels)


def test_train_batches_are_seeded_shuffled_and_cover_the_split(run):
    run_dir, config = run
    frame = load_split_frame(run_dir)
    n_train = int((frame["split"] == "train").sum())

    def batches(epoch):
        loader = make_loader(run_dir, config, "train", train=True, device=CPU, epoch=epoch, frame=frame)
        return loader, list(loader)

    loader, first = batches(1)
    _, again = batches(1)
    _, other = batches(2)
    assert len(first) == len(loader) == n_train // 16  # the last partial batch is dropped
    for (a, la), (b, lb) in zip(first, again):
        assert torch.equal(a, b) and torch.equal(la, lb)
    assert not torch.equal(first[0][0], other[0][0])
    for images, labels in first:
        assert images.shape == (16, 3, 218, 178) and labels.shape == (16, len(ATTRIBUTES))
        assert set(labels.unique().tolist()) <= {-1.0, 1.0}
    # Every label row comes from the train split, and (nearly) all of it is seen.
    train_labels = {tuple(row) for row in frame.loc[frame["split"] == "train", list(ATTRIBUTES)].to_numpy()}
    assert all(tuple(row) in train_labels for _, labels in first for row in labels.int().tolist())


def test_a_training_pass_on_the_cache_path_learns(learning_run):
    """A small CNN trained on cache batches beats the majority baseline on held-out images."""
    from faceattr.engine.inference import score_loader
    from faceattr.engine.metrics import majority_classes, summarise
    from faceattr.engine.train import AttributeLoss, train_one_epoch

    run_dir, config = learning_run
    frame = load_split_frame(run_dir)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 5, stride=4), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(512, len(ATTRIBUTES)),
    )
    optimizer = torch.optim.Adamax(model.parameters(), lr=3e-3)
    losses = []
    for epoch in range(1, 11):
        loader = make_loader(run_dir, config, "train", train=True, device=CPU, epoch=epoch, frame=frame)
        assert isinstance(loader, CachedLoader)
        stats = train_one_epoch(model, loader, AttributeLoss("mse"), optimizer, CPU, log_every_s=1e9)
        losses.append(stats["loss"])
    assert losses[-1] < 0.9 * losses[0]

    scores, labels = [], []
    for split in ("val", "test"):
        s, l = score_loader(model, make_loader(run_dir, config, split, train=False, device=CPU, frame=frame), CPU)
        scores.append(s)
        labels.append(l)
    train_labels = frame.loc[frame["split"] == "train", list(ATTRIBUTES)].to_numpy()
    result = summarise(np.concatenate(scores), np.concatenate(labels), 0.0, majority_classes(train_labels))
    assert result["mean_accuracy"] > result["majority_baseline"] + 0.01, result["mean_accuracy"]


def test_train_epoch_runs_on_the_cache_path(tmp_path):
    """The product's train_epoch with data_path "cache": checkpoint and metrics as on the PIL path."""
    from faceattr.checkpoint import load_checkpoint
    from faceattr.data.download import acquire
    from faceattr.data.split import make_split
    from faceattr.synth.files import generate
    from faceattr.engine.train import train_epoch

    generate(tmp_path / "source", n=40, seed=5)
    acquire(str(tmp_path / "source"), tmp_path / "root")
    run_dir = tmp_path / "run"
    config = RunConfig(root=str(tmp_path / "root"), arch="resnet18", weights="none", batch_size=16,
                       num_workers=0, device="cpu", data_path="cache")
    config.save(run_dir)
    assert make_split(tmp_path / "root", "random", 0, run_dir)["train"] == 32
    result = train_epoch(run_dir, 1, config)
    assert result["images"] == 32  # 2 batches of 16
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "epoch_1.pt")
    assert checkpoint["train"]["images"] == 32 and np.isfinite(checkpoint["train"]["loss"])
    assert (run_dir / "cache" / "train.json").is_file()


# -- scoring: JPEG batches decoded on the device --------------------------------------------------
def test_device_jpeg_decode_gives_the_pil_results_and_errors(tmp_path, monkeypatch):
    """predict with batched decode_jpeg (nvjpeg's code path, run here on the CPU) vs the PIL path."""
    import pandas as pd

    import faceattr.engine.predict as predict_module
    from faceattr.data.jpeg import plain_jpeg

    folder = tmp_path / "images"
    folder.mkdir()
    pixels = _images(5, seed=3)
    for i in range(3):
        Image.fromarray(pixels[i]).save(folder / f"{i:02d}_plain.jpg", quality=90)
    Image.fromarray(pixels[3]).convert("L").save(folder / "03_gray.jpg", quality=90)
    Image.fromarray(pixels[4]).resize((200, 250)).save(folder / "04_bigger.jpg", quality=90)
    Image.fromarray(pixels[0]).convert("CMYK").save(folder / "05_cmyk.jpg", quality=90)
    Image.fromarray(pixels[1]).save(folder / "06_image.png")
    rotated = Image.fromarray(pixels[2])
    exif = rotated.getexif()
    exif[0x0112] = 6
    rotated.save(folder / "07_rotated.jpg", quality=90, exif=exif.tobytes())
    whole = (folder / "00_plain.jpg").read_bytes()
    (folder / "08_truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (folder / "09_garbage.jpg").write_bytes(b"\xff\xd8\xff" + b"\x00" * 200 + b"\xff\xd9")
    (folder / "10_notes.txt").write_text("not an image")

    assert plain_jpeg(whole)
    assert not plain_jpeg(whole[: len(whole) // 2])
    assert not plain_jpeg((folder / "05_cmyk.jpg").read_bytes())
    assert not plain_jpeg((folder / "07_rotated.jpg").read_bytes())
    assert not plain_jpeg((folder / "09_garbage.jpg").read_bytes())

    model_path = _random_model_file(tmp_path / "model.pt")

    def run(name: str, device_decode: tuple[str, ...]):
        monkeypatch.setattr(predict_module, "DEVICE_DECODE", device_decode)
        out = tmp_path / f"{name}.csv"
        result = predict_module.predict(model_path, folder, out, scores=True, batch_size=4, device="cpu")
        return result, pd.read_csv(out, index_col="image_id"), pd.read_csv(out.with_name(f"{name}.errors.csv"))

    pil_result, pil_table, pil_errors = run("pil", ())
    calls = []
    real_decode = predict_module.JpegDecoder.decode
    monkeypatch.setattr(predict_module.JpegDecoder, "decode",
                        lambda self, raw: calls.append(len(raw.indices)) or real_decode(self, raw))
    fast_result, fast_table, fast_errors = run("fast", ("cpu",))

    assert sum(calls) == 5  # the plain JPEGs: 3 RGB, the grayscale one, the larger one
    assert fast_result == {**pil_result, "csv": fast_result["csv"], "errors_csv": fast_result["errors_csv"]}
    assert pil_result["rows"] == 8 and pil_result["errors"] == 3
    assert fast_errors["image_id"].tolist() == pil_errors["image_id"].tolist()
    assert fast_table.index.tolist() == pil_table.index.tolist()
    score_columns = [f"{name}_score" for name in ATTRIBUTES]
    # The decoders may differ by a grey level here and there (libjpeg versions, resize rounding).
    difference = (fast_table[score_columns] - pil_table[score_columns]).abs().to_numpy()
    spread = pil_table[score_columns].to_numpy().std()
    assert difference.max() < 0.05 * spread + 1e-4, difference.max()


def test_data_parallel_ranks_split_each_global_batch():
    from faceattr.data.loaders import CachedImages

    n = 40
    array = np.repeat(np.arange(n, dtype=np.uint8), 218 * 178 * 3).reshape(n, 218, 178, 3)  # image i: all i
    labels = np.where(np.random.default_rng(0).random((n, len(ATTRIBUTES))) < 0.5, -1, 1).astype(np.int8)
    dataset = CachedImages(array, [f"{i:06d}.jpg" for i in range(n)], labels)

    def image_numbers(rank: int, world_size: int) -> list[list[int]]:
        loader = CachedLoader(dataset, batch_size=8, train=True, device=CPU, seed=3, rank=rank, world_size=world_size)
        # A constant image stays constant under flip/resize/crop: its value names it.
        return [sorted(round(float(v)) for v in images[:, 0, 0, 0] * STD[0] * 255 + MEAN[0] * 255)
                for images, _ in loader]

    whole = image_numbers(0, 1)
    assert len(whole) == 5 and sorted(sum(whole, [])) == list(range(n))
    halves = [image_numbers(rank, 2) for rank in (0, 1)]
    whole_loader = CachedLoader(dataset, batch_size=8, train=True, device=CPU, seed=3)
    sharded = whole_loader.shard(1, 2)
    assert (sharded.rank, sharded.world_size, whole_loader.rank) == (1, 2, 0)
    assert [len(images) for images, _ in sharded] == [4] * 5
    for batch, first, second in zip(whole, *halves):
        assert len(first) == len(second) == 4
        assert sorted(first + second) == batch
    with pytest.raises(ValueError, match="rank"):
        CachedLoader(dataset, batch_size=8, train=True, device=CPU, rank=2, world_size=2)


def test_data_parallel_ranks_never_get_an_empty_batch():
    """A global batch smaller than the world size would leave a rank an empty batch (BatchNorm in
    train mode fails on it): it is dropped on every rank, as the PIL path's RankBatches does."""
    from faceattr.data.loaders import CachedImages

    def dataset(n):
        labels = np.ones((n, len(ATTRIBUTES)), np.int8)
        return CachedImages(np.zeros((n, 218, 178, 3), np.uint8), [f"{i:06d}.jpg" for i in range(n)], labels)

    # (images, batch, train, world size, batches per rank): 3 images over 4 ranks make no batch;
    # 9 in batches of 4 over 2 ranks drop the last single image; one process keeps it.
    for n, batch, train, world, expected in ((3, 8, True, 4, 0), (9, 4, False, 2, 2), (9, 4, False, 1, 3)):
        for rank in range(world):
            loader = CachedLoader(dataset(n), batch_size=batch, train=train, device=CPU, rank=rank, world_size=world)
            sizes = [len(images) for images, _ in loader]
            assert len(sizes) == len(loader) == expected and all(sizes), (n, batch, world, rank, sizes)


def test_a_device_resident_cache_gives_the_same_batches():
    """The whole-split-on-the-GPU path (exercised here on the CPU) equals the memory-map path."""
    from faceattr.data.loaders import CachedImages

    n = 20
    array = np.random.default_rng(1).integers(0, 256, (n, 218, 178, 3), dtype=np.uint8)
    labels = np.where(np.random.default_rng(2).random((n, len(ATTRIBUTES))) < 0.5, -1, 1).astype(np.int8)
    dataset = CachedImages(array, [f"{i:06d}.jpg" for i in range(n)], labels)
    for train in (True, False):
        streamed = CachedLoader(dataset, batch_size=8, train=train, device=CPU, seed=5, resident=False)
        resident = CachedLoader(dataset, batch_size=8, train=train, device=CPU, seed=5, resident=True)
        pairs = list(zip(streamed, resident))
        assert len(pairs) == (2 if train else 3)
        for (a, la), (b, lb) in pairs:
            assert torch.equal(a, b) and torch.equal(la, lb)


# -- CUDA (skipped without a GPU; failures under FACEATTR_REQUIRE_CUDA=1): the device paths agree with the CPU ones
cuda = pytest.mark.cuda


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what happens without a CUDA device")
def test_require_cuda_turns_the_cuda_skips_into_failures():
    import os
    import subprocess
    import sys

    def outcome(require: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k",
                   "test_cuda_augmentation_equals_the_cpu_one"]
        env = {**os.environ, "FACEATTR_REQUIRE_CUDA": require}
        return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)

    skipped, failed = outcome("0"), outcome("1")
    assert skipped.returncode == 0 and "1 skipped" in skipped.stdout, skipped.stdout[-2000:]
    assert failed.returncode == 1 and "FACEATTR_REQUIRE_CUDA=1 requires one" in failed.stdout, failed.stdout[-2000:]


@cuda
def test_cuda_augmentation_equals_the_cpu_one():
    pixels = torch.from_numpy(_images(16, seed=4))
    flip, top, left = augment_params(16, torch.Generator().manual_seed(1))
    on_cpu = augment_batch(pixels, flip, top, left)
    on_gpu = augment_batch(pixels.cuda(), flip, top, left)
    assert on_gpu.is_contiguous(memory_format=torch.channels_last)
    # CUDA resizes in float, the CPU in uint8: within one grey level.
    assert (on_gpu.cpu() - on_cpu).abs().max() <= ONE_LEVEL


@cuda
def test_cuda_cached_loader_resident_and_streamed_agree():
    from faceattr.data.loaders import CachedImages

    n = 24
    array = np.random.default_rng(1).integers(0, 256, (n, 218, 178, 3), dtype=np.uint8)
    labels = np.where(np.random.default_rng(2).random((n, len(ATTRIBUTES))) < 0.5, -1, 1).astype(np.int8)
    dataset = CachedImages(array, [f"{i:06d}.jpg" for i in range(n)], labels)
    device = torch.device("cuda")
    streamed = list(CachedLoader(dataset, batch_size=8, train=True, device=device, seed=5, resident=False))
    resident = list(CachedLoader(dataset, batch_size=8, train=True, device=device, seed=5, resident=True))
    on_cpu = list(CachedLoader(dataset, batch_size=8, train=True, device=CPU, seed=5))
    for (a, la), (b, lb), (c, lc) in zip(streamed, resident, on_cpu):
        assert a.device.type == "cuda" and torch.equal(a, b) and torch.equal(la, lb) and torch.equal(la, lc)
        assert (a.cpu() - c).abs().max() <= ONE_LEVEL


@cuda
def test_cuda_predict_decodes_jpegs_with_nvjpeg_and_keeps_the_errors(tmp_path, monkeypatch):
    import pandas as pd

    import faceattr.engine.predict as predict_module

    folder = tmp_path / "images"
    folder.mkdir()
    pixels = _images(6, seed=6)
    for i in range(6):
        Image.fromarray(pixels[i]).save(folder / f"{i:02d}.jpg", quality=90)
    whole = (folder / "00.jpg").read_bytes()
    (folder / "06_truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (folder / "07_notes.txt").write_text("not an image")
    model_path = _random_model_file(tmp_path / "model.pt")
    calls = []
    real_decode = predict_module.JpegDecoder.decode
    monkeypatch.setattr(predict_module.JpegDecoder, "decode",
                        lambda self, raw: calls.append(len(raw.indices)) or real_decode(self, raw))
    gpu = predict_module.predict(model_path, folder, tmp_path / "gpu.csv", scores=True, batch_size=4, device="cuda")
    assert sum(calls) == 6
    cpu = predict_module.predict(model_path, folder, tmp_path / "cpu.csv", scores=True, batch_size=4, device="cpu")
    assert (gpu["rows"], gpu["errors"]) == (cpu["rows"], cpu["errors"]) == (6, 2)
    gpu_table = pd.read_csv(tmp_path / "gpu.csv", index_col="image_id")
    cpu_table = pd.read_csv(tmp_path / "cpu.csv", index_col="image_id")
    columns = [f"{name}_score" for name in ATTRIBUTES]
    # bf16 on the GPU: the same scores up to bf16 rounding.
    correlation = np.corrcoef(gpu_table[columns].to_numpy().ravel(), cpu_table[columns].to_numpy().ravel())[0, 1]
    assert correlation > 0.99
    gpu_errors = pd.read_csv(tmp_path / "gpu.errors.csv")
    assert gpu_errors.equals(pd.read_csv(tmp_path / "cpu.errors.csv"))


@cuda
def test_cuda_resident_training_batches_never_wait_for_the_gpu():
    """Indices and augmentation draws reach the GPU from pinned memory: no batch synchronises the host."""
    from faceattr.data.loaders import CachedImages

    n = 64
    array = np.random.default_rng(3).integers(0, 256, (n, 218, 178, 3), dtype=np.uint8)
    labels = np.where(np.random.default_rng(4).random((n, len(ATTRIBUTES))) < 0.5, -1, 1).astype(np.int8)
    loader = CachedLoader(CachedImages(array, [f"{i:06d}.jpg" for i in range(n)], labels), batch_size=16, train=True,
                          device=torch.device("cuda"), seed=2, resident=True)
    list(loader)  # first use: allocations, cuDNN/interpolation set-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        batches = list(loader)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(batches) == 4 and all(images.is_cuda and images.shape[0] == 16 for images, _ in batches)
