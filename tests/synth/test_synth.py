"""faceattr.synth (sampling, drawing, files): a synthetic dataset in the official CelebA distribution format.

The files are parsed here by hand and strictly (not with faceattr.data.labels), so a format slip in
the generator cannot hide behind a lenient shared parser.
"""
from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faceattr.attributes import ATTRIBUTES
from faceattr.synth.drawing import DRAWN_ATTRIBUTES, draw_face
from faceattr.synth.files import generate
from faceattr.synth.sampling import sample_labels

FILES = ("img_align_celeba.zip", "list_attr_celeba.txt", "list_eval_partition.txt", "identity_CelebA.txt")
NAME = r"\d{6}\.jpg"
ATTR_ROW = re.compile(NAME + r"(?: -1|  1){40}")
PARTITION_ROW = re.compile(NAME + r" [012]")
IDENTITY_ROW = re.compile(NAME + r" [1-9]\d*")

# Training augmentation (the write-up): resize to 220x270, random crop back to 178x218.
# Pixels inside this box of the original image survive every crop.
KEPT_X = (int(np.ceil(42 * 178 / 220)), int(178 * 178 / 220))
KEPT_Y = (int(np.ceil(52 * 218 / 270)), int(218 * 218 / 270))


def crlf_lines(path: Path) -> list[str]:
    """The file's lines; every line must end in CRLF, with no stray CR or LF inside."""
    data = path.read_bytes()
    assert data.endswith(b"\r\n"), f"{path.name}: last line does not end in CRLF"
    lines = data[:-2].split(b"\r\n")
    for number, line in enumerate(lines, 1):
        assert b"\r" not in line and b"\n" not in line, f"{path.name} line {number}: bare CR or LF"
    return [line.decode("ascii") for line in lines]


def spacing(line: str) -> str:
    """The line's layout with the values blanked: '000000.jpg XX XX ...'."""
    return re.sub(r" (?:-1| 1)", " XX", re.sub(r"^\d{6}", "000000", line))


class Dataset:
    """A generated folder, read strictly."""

    def __init__(self, folder: Path):
        self.folder = folder
        attr_lines = crlf_lines(folder / "list_attr_celeba.txt")
        self.count_line, self.header, rows = attr_lines[0], attr_lines[1], attr_lines[2:]
        for number, row in enumerate(rows, 3):
            assert ATTR_ROW.fullmatch(row), f"list_attr_celeba.txt line {number}: {row!r}"
        self.names = [row[:10] for row in rows]
        self.labels = np.array([row[10:].split() for row in rows], dtype=np.int8)

        partition_rows = crlf_lines(folder / "list_eval_partition.txt")
        identity_rows = crlf_lines(folder / "identity_CelebA.txt")
        checks = (("partition", PARTITION_ROW, partition_rows), ("identity", IDENTITY_ROW, identity_rows))
        for file, pattern, lines in checks:
            for number, line in enumerate(lines, 1):
                assert pattern.fullmatch(line), f"{file} line {number}: {line!r}"
            assert [line[:10] for line in lines] == self.names, f"{file} file lists other images"
        self.partition = np.array([int(line[11:]) for line in partition_rows])
        self.identity = np.array([int(line[11:]) for line in identity_rows])

    def column(self, attribute: str) -> np.ndarray:
        return self.labels[:, ATTRIBUTES.index(attribute)] == 1

    def images(self, reduce: int = 1) -> np.ndarray:
        """All images, shrunk `reduce` times, as an N x H x W x 3 uint8 array in file order."""
        with zipfile.ZipFile(self.folder / "img_align_celeba.zip") as archive:
            images = []
            for name in self.names:
                with Image.open(io.BytesIO(archive.read(f"img_align_celeba/{name}"))) as image:
                    images.append(np.asarray(image.convert("RGB").reduce(reduce)))
            return np.stack(images)


@pytest.fixture(scope="module")
def sample(synth_source: Path) -> Dataset:
    return Dataset(synth_source)


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """600 images: enough for base rates, correlations and a pixel classifier."""
    out = tmp_path_factory.mktemp("synth-large")
    generate(out, n=600, seed=3)
    return Dataset(out)


# -- determinism and errors --------------------------------------------------------------------
def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path):
    first = generate(tmp_path / "a", n=25, seed=5)
    generate(tmp_path / "b", n=25, seed=5)
    generate(tmp_path / "c", n=25, seed=6)
    for name in FILES:
        a, b, c = ((tmp_path / run / name).read_bytes() for run in "abc")
        assert a == b, f"{name}: differs between two runs with the same seed"
        if name != "list_eval_partition.txt":  # 25 images can split alike by chance
            assert a != c, f"{name}: identical for seeds 5 and 6"
    assert first["images"] == 25 and first["path"] == str(tmp_path / "a")
    assert sum(first["partition"].values()) == 25 and first["seconds"] >= 0
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(FILES), "stray or temporary files left"


@pytest.mark.parametrize("n", [0, -3, 1_000_000, 2.5, True])
def test_bad_n_is_refused(tmp_path: Path, n):
    with pytest.raises(ValueError, match="n: "):
        generate(tmp_path / "out", n=n, seed=0)
    assert not (tmp_path / "out").exists()


def test_out_that_is_a_file_is_refused(tmp_path: Path):
    target = tmp_path / "dataset"
    target.write_text("not a folder")
    with pytest.raises(FileExistsError, match=str(target)):
        generate(target, n=3, seed=0)
    assert target.read_text() == "not a folder"


def test_a_single_image_works(tmp_path: Path):
    summary = generate(tmp_path, n=1, seed=0)
    data = Dataset(tmp_path)
    assert summary["images"] == 1 and data.names == ["000001.jpg"] and data.count_line == "1"


# -- format ----------------------------------------------------------------------------------
def test_label_files_follow_the_official_format(sample: Dataset):
    n = len(sample.names)
    assert sample.count_line == str(n) == "120"
    assert sample.header == " ".join(ATTRIBUTES) + " "  # the real header ends in a space
    assert sample.names == [f"{i:06d}.jpg" for i in range(1, n + 1)]
    assert set(np.unique(sample.labels)) == {-1, 1}
    assert set(sample.partition) <= {0, 1, 2}


@pytest.mark.realdata
def test_spacing_matches_the_real_files(sample: Dataset, celeba_sample: Path):
    real_attr = crlf_lines(celeba_sample / "list_attr_celeba.txt")
    assert real_attr[0].isdigit() and sample.count_line.isdigit()
    assert sample.header == real_attr[1], "header differs from the real file's, byte for byte"
    real_layout = spacing(real_attr[2])
    assert real_layout == "000000.jpg" + " XX" * 40, "the real file is not laid out as this test assumes"
    ours = crlf_lines(sample.folder / "list_attr_celeba.txt")[2:]
    assert {spacing(line) for line in ours} == {real_layout}
    # The row patterns used to check our files also match the real ones.
    for file, pattern in (("list_eval_partition.txt", PARTITION_ROW), ("identity_CelebA.txt", IDENTITY_ROW)):
        assert all(pattern.fullmatch(line) for line in crlf_lines(celeba_sample / file)[:50]), file


def test_images_are_178x218_rgb_jpegs_in_the_official_zip_layout(sample: Dataset):
    with zipfile.ZipFile(sample.folder / "img_align_celeba.zip") as archive:
        entries = archive.infolist()
        assert [e.filename for e in entries] == [f"img_align_celeba/{name}" for name in sample.names]
        for entry in entries:
            with Image.open(io.BytesIO(archive.read(entry))) as image:
                assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (178, 218)), entry.filename


# -- labels ----------------------------------------------------------------------------------
class Sampled:
    """sample_labels() output with the same accessors as a parsed Dataset."""

    def __init__(self, n: int, seed: int):
        data = sample_labels(n, seed)
        self.labels, self.partition, self.identity = data.table, data.partition, data.identity
        self.names = [f"{i:06d}.jpg" for i in range(1, n + 1)]

    column = Dataset.column


@pytest.fixture(scope="module")
def many() -> Sampled:
    return Sampled(20_000, seed=1)


def test_files_hold_the_sampled_labels(sample: Dataset):
    expected = sample_labels(120, seed=7)  # conftest's synth_source
    assert np.array_equal(sample.labels, expected.table)
    assert np.array_equal(sample.partition, expected.partition)
    assert np.array_equal(sample.identity, expected.identity)


@pytest.mark.parametrize("source", ["large", "many"])
def test_partition_is_official_like_and_identity_disjoint(source: str, request: pytest.FixtureRequest):
    data = request.getfixturevalue(source)
    shares = np.bincount(data.partition, minlength=3) / len(data.names)
    assert np.allclose(shares, (0.81, 0.10, 0.09), atol=0.05 if source == "large" else 0.01), shares
    assert np.all(np.diff(data.partition) >= 0), "images should run train, then val, then test"
    people = [set(data.identity[data.partition == p]) for p in range(3)]
    assert not (people[0] & people[1] or people[0] & people[2] or people[1] & people[2])
    assert len(set(data.identity)) < len(data.names) / 4, "identities should be reused"


def test_traits_are_fixed_per_identity(many: Sampled):
    fixed = ["Male", "Pale_Skin", "Bald", "Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair", "Young", "Goatee"]
    order = np.argsort(many.identity, kind="stable")
    same_person = np.diff(many.identity[order]) == 0
    for attribute in fixed:
        column = many.labels[order, ATTRIBUTES.index(attribute)]
        assert (np.diff(column)[same_person] == 0).all(), f"{attribute} changes between images of one person"


@pytest.mark.parametrize("source", ["large", "many"])
def test_labels_carry_the_real_correlations(source: str, request: pytest.FixtureRequest):
    col = request.getfixturevalue(source).column
    assert not (col("No_Beard") & (col("Goatee") | col("Mustache"))).any()
    hair_colours = [col(a) for a in ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair")]
    assert not (col("Bald") & (col("Bangs") | np.logical_or.reduce(hair_colours))).any()
    assert np.sum(hair_colours, axis=0).max() <= 1
    female = ~col("Male")
    for attribute in ("Goatee", "Mustache", "Sideburns", "Bald", "5_o_Clock_Shadow"):
        assert not (female & col(attribute)).any(), f"a woman with {attribute}"
    assert col("No_Beard")[female].all()
    assert not (col("Sideburns") & col("No_Beard")).any(), "sideburns on a clean-shaven face"
    bald = col("Bald")
    hat = col("Wearing_Hat")
    assert hat[bald].mean() <= 0.02 and hat[~bald].mean() > 0.04, "the bald wear no hats: a hat would hide the scalp"
    assert col("Heavy_Makeup")[col("Male")].mean() < 0.02
    assert col("Wearing_Lipstick")[col("Heavy_Makeup")].mean() > 0.9
    smiling = col("Smiling")
    assert col("Mouth_Slightly_Open")[smiling].mean() > col("Mouth_Slightly_Open")[~smiling].mean() + 0.3
    assert col("Gray_Hair")[col("Young")].mean() < col("Gray_Hair")[~col("Young")].mean()


@pytest.mark.realdata
def test_base_rates_resemble_the_real_annotations(many: Sampled, celeba_annotations: Path):
    import pandas as pd

    real = pd.read_csv(celeba_annotations / "list_attr_celeba.txt", sep=r"\s+", skiprows=1)
    assert list(real.columns) == list(ATTRIBUTES)
    real_rates = (real.to_numpy() == 1).mean(axis=0)
    ours = (many.labels == 1).mean(axis=0)
    far = {a: (round(o, 3), round(r, 3)) for a, o, r in zip(ATTRIBUTES, ours, real_rates) if abs(o - r) > 0.03}
    assert not far, f"base rates (ours, real) far from CelebA's: {far}"


# The design's rates, multiplied out by hand: 42 % men; bald: 4 % of young men (63 %), 20 % of the
# others; beard styles of men: goatee 13 %, mustache 8 %, both 7 %, full beard 11 %, with sideburns
# at 47 %, 20 %, 59 % and 23 %; pale: 4 % of men, 8 % of women; glasses: 9.5 % of people wear them
# in 85 % of their photos, the rest in 0.5 %; ties: 38 % of men, in 55 % of their photos.
DESIGN_RATES = {
    "Bald": 0.42 * (0.63 * 0.04 + 0.37 * 0.20),
    "Goatee": 0.42 * (0.13 + 0.07),
    "Mustache": 0.42 * (0.08 + 0.07),
    "Sideburns": 0.42 * (0.13 * 0.47 + 0.08 * 0.20 + 0.07 * 0.59 + 0.11 * 0.23),
    "Pale_Skin": 0.42 * 0.04 + 0.58 * 0.08,
    "Eyeglasses": 0.095 * 0.85 + 0.905 * 0.005,
    "Wearing_Necktie": 0.42 * 0.38 * 0.55,
}


def test_rare_per_person_attributes_hold_their_share_in_every_sample():
    # A benchmark of 2,000 images must hold what the rates promise whatever the seed, not only on
    # average (a coin flip per person let a rare trait swing by half its rate; README).
    off = {}
    for seed in range(10):
        data = sample_labels(2000, seed)
        for attribute, rate in DESIGN_RATES.items():
            share = data.labels[attribute].mean()
            if abs(share - rate) > 0.02:
                off[(seed, attribute)] = (round(share, 3), round(rate, 3))
    assert not off, f"(seed, attribute): (share of 2,000 images, the design's rate): {off}"


def test_spreading_keeps_each_persons_chance():
    from faceattr.synth.sampling import _pick, _pick_category

    rng = np.random.default_rng(0)
    photos = rng.integers(0, 30, 60)
    p = rng.uniform(0, 0.5, 60)
    picks = np.array([_pick(rng, p, photos) for _ in range(4000)])
    assert np.abs(picks.mean(axis=0) - p).max() < 0.03, "each person keeps their own probability"
    shares = picks @ photos / photos.sum()
    coin_flips = np.sqrt((p * (1 - p)) @ photos**2) / photos.sum()
    assert shares.std() < coin_flips / 3, (shares.std(), coin_flips)

    probs = rng.dirichlet(np.ones(4), 60)
    chosen = np.array([_pick_category(rng, probs, photos) for _ in range(4000)])
    frequency = np.stack([(chosen == c).mean(axis=0) for c in range(4)], axis=1)
    assert np.abs(frequency - probs).max() < 0.03


# -- pixels ----------------------------------------------------------------------------------
ALL_OFF = {"No_Beard"}  # a woman with ginger hair and nothing else
MAN = {"No_Beard", "Male"}
TOGGLES = {  # attribute -> (without, with)
    "Bald": (MAN, MAN | {"Bald"}),
    "Goatee": (MAN, {"Male", "Goatee"}),
    "Mustache": (MAN, {"Male", "Mustache"}),
    "No_Beard": ({"Male"}, MAN),
    "Sideburns": (MAN, MAN | {"Sideburns"}),
    "Wearing_Necktie": (MAN, MAN | {"Wearing_Necktie"}),
}


@pytest.mark.parametrize("attribute", DRAWN_ATTRIBUTES)
def test_each_drawn_attribute_survives_every_training_crop(attribute: str):
    without, with_ = TOGGLES.get(attribute, (ALL_OFF, ALL_OFF | {attribute}))
    for seed in range(3):  # three people in three poses
        a = np.asarray(draw_face(without, seed), dtype=np.int16)
        b = np.asarray(draw_face(with_, seed), dtype=np.int16)
        changed = np.abs(a - b).max(axis=2) > 40
        kept = changed[KEPT_Y[0] : KEPT_Y[1], KEPT_X[0] : KEPT_X[1]].sum()
        assert kept >= 25, f"{attribute} (seed {seed}): only {kept} clearly changed pixels inside every crop"


def test_draw_face_refuses_unknown_names():
    with pytest.raises(ValueError, match="Sunglasses"):
        draw_face({"Sunglasses"})


def hog_features(images: np.ndarray, cell: int = 8, bins: int = 8) -> np.ndarray:
    """Histograms of gradient orientation per cell plus the cell's mean colour: the classic
    pre-deep-learning face-attribute features, small enough for a linear model."""
    grey = images.mean(axis=3, dtype=np.float32)
    gy, gx = np.gradient(grey, axis=(1, 2))
    magnitude = np.hypot(gx, gy)
    orientation = np.minimum((np.mod(np.arctan2(gy, gx), np.pi) / np.pi * bins).astype(int), bins - 1)
    n, h, w = grey.shape[0], grey.shape[1] // cell, grey.shape[2] // cell

    def per_cell(values: np.ndarray) -> np.ndarray:
        cells = values[:, : h * cell, : w * cell].reshape(n, h, cell, w, cell, *values.shape[3:])
        return cells.sum(axis=(2, 4), dtype=np.float32)

    hist = np.stack([per_cell(magnitude * (orientation == b)) for b in range(bins)], axis=-1)
    hist /= np.linalg.norm(hist, axis=-1, keepdims=True) + cell * cell
    colour = per_cell(images) / (cell * cell * 255.0)
    return np.concatenate([hist.reshape(n, -1), colour.reshape(n, -1)], axis=1)


def test_drawn_attributes_are_learnable_from_pixels(large: Dataset):
    """A linear model on gradient features, scored by 5-fold cross-validation, clearly beats
    always guessing the majority: the labels are in the pixels, not only in the label file.

    "Clearly": at most 3/4 of the majority guess's errors. Correlated labels alone (a smile opens
    the mouth; glasses belong to people) stay close to the majority when the cue is not drawn.
    """
    from sklearn.linear_model import RidgeClassifier
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.preprocessing import StandardScaler

    # Half size with 4-pixel cells: the same 27x22 grid as 8-pixel cells at full size, 4x cheaper.
    features = StandardScaler().fit_transform(hog_features(large.images(reduce=2), cell=4))
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
    errors = {}
    for attribute in ("Eyeglasses", "Smiling", "Wearing_Hat"):
        y = large.column(attribute)
        predicted = cross_val_predict(RidgeClassifier(alpha=100.0), features, y, cv=folds)
        errors[attribute] = (int((predicted != y).sum()), int(min(y.sum(), (~y).sum())))
    assert all(model_errors <= 0.75 * majority_errors for model_errors, majority_errors in errors.values()), (
        f"errors (model, majority guess): {errors}"
    )
