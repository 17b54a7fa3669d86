"""faceattr.data.transforms and faceattr.data.loaders: transforms, the Dataset and the run's DataLoader."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from faceattr.run.config import RunConfig
from faceattr.data.loaders import CelebAImages, load_split_frame, make_loader
from faceattr.data.transforms import eval_transform, train_transform
from faceattr.data.images import MEAN, STD
from faceattr.attributes import ATTRIBUTES

CPU = torch.device("cpu")


def _gradient_image(width: int = 178, height: int = 218) -> Image.Image:
    """An image whose pixels differ left-right and top-bottom, so crops and flips are visible."""
    x = np.linspace(0, 255, width)[None, :]
    y = np.linspace(0, 255, height)[:, None]
    pixels = np.stack([x + 0 * y, y + 0 * x, (x + y) / 2], axis=-1)
    return Image.fromarray(pixels.astype(np.uint8))


def _normalised(image: Image.Image) -> torch.Tensor:
    return TF.normalize(TF.to_tensor(image), MEAN, STD)


# -- transforms ---------------------------------------------------------------------------------
def test_train_transform_gives_normalised_3x218x178():
    # A uniform image at the ImageNet mean normalises to ~0 everywhere, white to (1 - mean) / std.
    mean_colour = tuple(round(m * 255) for m in MEAN)
    out = train_transform()(Image.new("RGB", (178, 218), mean_colour))
    assert out.shape == (3, 218, 178) and out.dtype == torch.float32
    assert out.abs().max() < 0.01
    white = train_transform()(Image.new("RGB", (178, 218), (255, 255, 255)))
    expected = (1 - torch.tensor(MEAN)) / torch.tensor(STD)
    assert torch.allclose(white.mean(dim=(1, 2)), expected, atol=1e-3)


def _window_position(source: torch.Tensor, out: torch.Tensor) -> tuple[int, int] | None:
    """(top, left) where `out` is a window of `source`, or None."""
    height, width = out.shape[1:]
    # Candidates from the 4x4 top-left patch, then a full comparison.
    patches = source.unfold(1, 4, 1).unfold(2, 4, 1)  # 3 x H' x W' x 4 x 4
    corner = out[:, :4, :4][:, None, None]
    close = ((patches - corner).abs() < 1e-4).all(dim=-1).all(dim=-1).all(dim=0)
    for top, left in close.nonzero().tolist():
        window = source[:, top:top + height, left:left + width]
        if window.shape == out.shape and torch.allclose(window, out, atol=1e-4):
            return top, left
    return None


def test_train_transform_is_a_crop_of_the_220x270_resize():
    image = _gradient_image()
    enlarged = _normalised(TF.resize(image, [270, 220]))
    enlarged_flipped = _normalised(TF.resize(TF.hflip(image), [270, 220]))
    torch.manual_seed(3)
    offsets = set()
    for _ in range(6):
        out = train_transform()(image)
        assert out.shape == (3, 218, 178)
        found = _window_position(enlarged, out) or _window_position(enlarged_flipped, out)
        assert found, "the output is not a 178x218 window of the image resized to 220x270"
        offsets.add(found)
    assert len(offsets) > 1, "the crop position never changes"


def test_flip_really_flips():
    # Left half black, right half white: a flipped output is bright on the left.
    pixels = np.zeros((218, 178, 3), np.uint8)
    pixels[:, 89:] = 255
    image = Image.fromarray(pixels)
    torch.manual_seed(0)
    flipped = 0
    trials = 60
    for _ in range(trials):
        out = train_transform()(image)
        left, right = out[:, :, :40].mean(), out[:, :, -40:].mean()
        assert abs(left - right) > 2, "one side must stay dark and the other bright"
        flipped += bool(left > right)
    assert 0.25 * trials < flipped < 0.75 * trials, f"flipped {flipped} of {trials} times, expected about half"


def test_eval_transform_leaves_178x218_images_unchanged():
    image = _gradient_image()
    assert torch.equal(eval_transform()(image), _normalised(image))


@pytest.mark.parametrize("size", [(356, 436), (300, 300), (89, 109)])
def test_eval_transform_resizes_other_sizes(size):
    image = _gradient_image(*size)
    out = eval_transform()(image)
    assert out.shape == (3, 218, 178)
    # Same picture at another scale: close to the native-size rendering.
    if size == (356, 436):
        assert (out - _normalised(_gradient_image())).abs().mean() < 0.05


def test_eval_transform_is_deterministic():
    image = _gradient_image()
    assert torch.equal(eval_transform()(image), eval_transform()(image))


# -- dataset ------------------------------------------------------------------------------------
@pytest.fixture()
def labelled_folder(tmp_path: Path):
    """Six PNGs whose grey level encodes their index, and a distinct label row per image."""
    ids = [f"{i:06d}.png" for i in range(1, 7)]
    for i, image_id in enumerate(ids):
        Image.new("RGB", (178, 218), (40 * i, 40 * i, 40 * i)).save(tmp_path / image_id)
    rng = np.random.default_rng(0)
    labels = np.where(rng.random((len(ids), len(ATTRIBUTES))) < 0.5, -1, 1).astype(np.int8)
    return tmp_path, ids, labels


def test_dataset_returns_float_pm1_labels_aligned_with_ids(labelled_folder):
    folder, ids, labels = labelled_folder
    dataset = CelebAImages(folder, ids, labels, eval_transform())
    assert len(dataset) == len(ids)
    for i in (0, 3, 5):
        image, target = dataset[i]
        assert target.dtype == torch.float32 and target.shape == (40,)
        assert set(target.unique().tolist()) <= {-1.0, 1.0}
        assert torch.equal(target, torch.from_numpy(labels[i].astype(np.float32)))
        grey = image[0] * STD[0] + MEAN[0]  # undo the normalisation of the red channel
        assert grey.mean().item() == pytest.approx(40 * i / 255, abs=1e-3)


def test_dataset_without_labels(labelled_folder):
    folder, ids, _ = labelled_folder
    image, target = CelebAImages(folder, ids, None, eval_transform())[0]
    assert image.shape == (3, 218, 178) and target.numel() == 0


def test_dataset_rejects_bad_labels(labelled_folder):
    folder, ids, labels = labelled_folder
    with pytest.raises(ValueError, match="shape"):
        CelebAImages(folder, ids, labels[:-1], eval_transform())
    with pytest.raises(ValueError, match="-1 or 1"):
        CelebAImages(folder, ids, np.zeros_like(labels), eval_transform())


def test_dataset_names_a_missing_image(labelled_folder):
    folder, ids, labels = labelled_folder
    dataset = CelebAImages(folder, ["999999.jpg"], labels[:1], eval_transform())
    with pytest.raises(ValueError, match="999999.jpg"):
        dataset[0]


# -- a run's frame and loaders ------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from faceattr.data.split import make_split

    run = tmp_path_factory.mktemp("data-run")
    RunConfig(root=str(synth_root), arch="resnet18", weights="none").save(run)
    make_split(synth_root, "random", 0, run)
    return run


def _config(run_dir: Path, **changes) -> RunConfig:
    # data_path "pil": these tests are about the write-up's DataLoader (tests/test_fast_path.py has the cache's).
    return RunConfig.load(run_dir).replace(**{"batch_size": 8, "num_workers": 0, "data_path": "pil", **changes})


def test_split_frame_joins_split_and_labels(run_dir, synth_root):
    from faceattr.data.labels import read_attributes
    from faceattr.data.split import read_split

    frame = load_split_frame(run_dir)
    split = read_split(run_dir)
    assert list(frame.columns) == ["split", *ATTRIBUTES]
    assert frame.index.tolist() == split.index.tolist()
    assert (frame["split"] == split).all()
    labels = read_attributes(synth_root / "celeba" / "list_attr_celeba.txt")
    assert (frame[list(ATTRIBUTES)] == labels.loc[frame.index]).all().all()


def test_split_frame_names_ids_without_labels(run_dir, tmp_path):
    import shutil

    other = tmp_path / "run"
    shutil.copytree(run_dir, other)
    split_csv = other / "split.csv"
    split_csv.write_text(split_csv.read_text() + "zzzzzz.jpg,train\n")
    with pytest.raises(ValueError, match="zzzzzz.jpg"):
        load_split_frame(other)


def _batches(loader, n: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == n:
            break
    return batches


def _same(a, b) -> bool:
    return all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b, strict=True))


def test_train_loader_repeats_per_seed_and_epoch_with_workers(run_dir):
    config = _config(run_dir, num_workers=2)
    first = _batches(make_loader(run_dir, config, "train", train=True, device=CPU, epoch=1))
    again = _batches(make_loader(run_dir, config, "train", train=True, device=CPU, epoch=1))
    next_epoch = _batches(make_loader(run_dir, config, "train", train=True, device=CPU, epoch=2))
    other_seed = _batches(make_loader(run_dir, config.replace(seed=1), "train", train=True, device=CPU, epoch=1))
    assert first[0][0].shape == (8, 3, 218, 178) and first[0][1].shape == (8, 40)
    assert _same(first, again)
    assert not _same(first, next_epoch)
    assert not _same(first, other_seed)


def test_train_loader_in_process_repeats_with_the_global_seed(run_dir):
    config = _config(run_dir)
    torch.manual_seed(5)
    first = _batches(make_loader(run_dir, config, "train", train=True, device=CPU, epoch=1))
    torch.manual_seed(5)
    again = _batches(make_loader(run_dir, config, "train", train=True, device=CPU, epoch=1))
    assert _same(first, again)


def test_eval_loader_keeps_split_order_and_labels(run_dir):
    config = _config(run_dir)
    frame = load_split_frame(run_dir)
    val = frame[frame["split"] == "val"]
    loader = make_loader(run_dir, config, "val", train=False, device=CPU, batch_size=16)
    assert loader.dataset.image_ids == val.index.tolist()
    labels = torch.cat([targets for _, targets in loader])
    assert torch.equal(labels, torch.from_numpy(val[list(ATTRIBUTES)].to_numpy(np.float32)))


def test_make_loader_rejects_an_unknown_split(run_dir):
    with pytest.raises(ValueError, match="holdout"):
        make_loader(run_dir, _config(run_dir), "holdout", train=False, device=CPU)


def test_a_compiled_model_gets_only_full_training_batches(run_dir):
    """A new batch shape recompiles a compiled model: with compile on, training drops the last partial batch."""
    from faceattr.engine.parallel import Rank, RankBatches

    n = int((load_split_frame(run_dir)["split"] == "train").sum())
    size = next(b for b in range(7, 30) if n % b >= 2)  # a remainder that two ranks could still split

    def batch_sizes(loader) -> list[int]:
        return [len(batch) for batch in loader.batch_sampler]  # the sampler only: no image is decoded

    compiled = make_loader(run_dir, _config(run_dir, compile=True, batch_size=size), "train", train=True, device=CPU)
    assert batch_sizes(compiled) == [size] * (n // size) and len(compiled) == n // size
    eager = make_loader(run_dir, _config(run_dir, compile=False, batch_size=size), "train", train=True, device=CPU)
    assert batch_sizes(eager)[-1] == n % size  # the write-up's loader keeps every image
    evaluation = make_loader(run_dir, _config(run_dir, compile=True, batch_size=size), "val", train=False, device=CPU)
    assert sum(batch_sizes(evaluation)) == len(evaluation.dataset)  # scoring sees every image
    # Data-parallel ranks split only full global batches: each rank's batches have one size.
    for rank in (0, 1):
        shares = RankBatches(compiled.batch_sampler, Rank(rank, 2))
        sizes = [len(share) for share in shares]
        assert len(set(sizes)) == 1 and len(sizes) == len(shares) == n // size
