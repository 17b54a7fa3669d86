"""Split the dataset into train / val / test and record it as RUN/split.csv.

Strategies:
    random    the write-up's 80/10/10 with sklearn's train_test_split (80/20, then the 20 halved)
    official  list_eval_partition.txt (0 train, 1 val, 2 test)
    identity  80/10/10 of the identities (sklearn's GroupShuffleSplit), so no person is in two parts

The label file defines the set of images (download has checked every one is on disk). split.csv
has the header `image_id,split` and one row per image sorted by image_id, so the same inputs and
seed give the same bytes. The split is made from the current data version (or the one the run
already records) and RUN/data_version.json names it: the run reads that version from then on.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from faceattr.attributes import SPLITS
from faceattr.fsutil import write_text
from faceattr.data.labels import read_attributes, read_identity, read_partition
from faceattr.data import versions
from faceattr.data.layout import ATTR_FILE, IDENTITY_FILE, PARTITION_FILE, celeba_dir
from faceattr.run.layout import RunLayout

if TYPE_CHECKING:
    import numpy as np  # not at DAG parse time
    import pandas as pd  # the DAG files import this module at parse time

STRATEGIES = ("random", "official", "identity")
HELD_OUT = 0.2  # val + test share; the held-out part is then halved


class SplitError(ValueError):
    """A split cannot be made, or split.csv is malformed; the message says which and where."""


def make_split(root: Path, strategy: str, seed: int, run_dir: Path) -> dict[str, Any]:
    """Split the images of `root`'s data version with `strategy`; write `run_dir`/split.csv and
    data_version.json atomically (a run that records a version keeps it)."""
    if strategy not in STRATEGIES:
        raise SplitError(f"strategy: {strategy!r} is not one of {', '.join(STRATEGIES)}")
    with versions.locked(root, shared=True):  # not while a download swaps the current version
        version = versions.run_version(run_dir) or versions.current_version(root)
        folder = versions.version_dir(root, version) if version else celeba_dir(root)
        result = _split_folder(folder, root, strategy, seed, run_dir)
        versions.record_run_version(run_dir, root, version)
    return {**result, "data_version": version}


def _split_folder(folder: Path, root: Path, strategy: str, seed: int, run_dir: Path) -> dict[str, Any]:
    import pandas as pd  # the DAG files import this module at parse time

    attr_path = folder / ATTR_FILE
    if not attr_path.is_file():
        raise FileNotFoundError(f"{attr_path}: not found; run 'faceattr download --source SRC --root {root}' first")
    image_ids = pd.Index(sorted(read_attributes(attr_path).index), name="image_id")

    if strategy == "random":
        parts = _random_split(image_ids, seed)
    elif strategy == "official":
        parts = _official_split(image_ids, folder / PARTITION_FILE)
    else:
        parts = _identity_split(image_ids, folder / IDENTITY_FILE, seed)

    counts = {name: int((parts == name).sum()) for name in SPLITS}
    empty = [name for name in SPLITS if counts[name] == 0]
    if empty:
        raise SplitError(
            f"{attr_path}: the {strategy} split of {len(image_ids)} images leaves {' and '.join(empty)} empty "
            f"(counts {counts}); use more images{' or another strategy' if strategy == 'official' else ''}"
        )
    path = RunLayout(run_dir).split
    lines = ["image_id,split", *(f"{image_id},{part}" for image_id, part in zip(image_ids, parts))]
    write_text(path, "\n".join(lines) + "\n")
    return {**counts, "strategy": strategy, "seed": seed, "images": len(image_ids), "path": str(path)}


def read_split(run_dir: Path) -> "pd.Series":
    """RUN/split.csv -> Series image_id -> "train" | "val" | "test", named "split"; checked line by line."""
    import pandas as pd  # the DAG files import this module at parse time

    path = RunLayout(run_dir).split
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; run 'faceattr split' first")
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    if not lines or lines[0].strip() != "image_id,split":
        found = repr(lines[0]) if lines else "an empty file"
        raise SplitError(f"{path}, line 1: expected the header 'image_id,split', found {found}")
    ids: list[str] = []
    splits: list[str] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split(",")
        if len(fields) != 2 or not fields[0] or fields[1] not in SPLITS:
            raise SplitError(f"{path}, line {number}: expected 'image_id,train|val|test', found {line!r}")
        image_id = fields[0]
        if image_id in seen:
            raise SplitError(f"{path}, line {number}: {image_id!r} is listed again (first on line {seen[image_id]})")
        seen[image_id] = number
        ids.append(image_id)
        splits.append(fields[1])
    if not ids:
        raise SplitError(f"{path}: no rows after the header")
    return pd.Series(splits, index=pd.Index(ids, name="image_id"), name="split")


# -- strategies ---------------------------------------------------------------------------------
def _random_split(image_ids: "pd.Index", seed: int) -> "np.ndarray":
    import numpy as np  # numpy and sklearn: not at DAG parse time
    from sklearn.model_selection import train_test_split

    if len(image_ids) < 10:
        raise SplitError(f"random split: {len(image_ids)} images are too few for 80/10/10; need at least 10")
    positions = np.arange(len(image_ids))
    train, held_out = train_test_split(positions, test_size=HELD_OUT, random_state=seed)
    val, test = train_test_split(held_out, test_size=0.5, random_state=seed)
    return _labels(len(image_ids), train, val, test)


def _official_split(image_ids: "pd.Index", partition_path: Path) -> "np.ndarray":
    import numpy as np  # not at DAG parse time

    if not partition_path.is_file():
        raise FileNotFoundError(f"{partition_path}: not found; the official split needs {PARTITION_FILE}")
    partition = read_partition(partition_path).reindex(image_ids)
    _check_covered(partition, partition_path)
    return np.array(SPLITS, dtype=object)[partition.to_numpy().astype(int)]


def _identity_split(image_ids: "pd.Index", identity_path: Path, seed: int) -> "np.ndarray":
    import numpy as np  # numpy and sklearn: not at DAG parse time
    from sklearn.model_selection import GroupShuffleSplit

    if not identity_path.is_file():
        raise FileNotFoundError(
            f"{identity_path}: not found; the identity split needs {IDENTITY_FILE} "
            "(download it with the dataset, or use --strategy random or official)"
        )
    identity = read_identity(identity_path).reindex(image_ids)
    _check_covered(identity, identity_path)
    groups = identity.to_numpy()
    people = len(np.unique(groups))
    if people < 10:
        raise SplitError(f"{identity_path}: {people} identities are too few for an identity-disjoint 80/10/10 split")
    positions = np.arange(len(image_ids))
    # Shares are of identities, so image shares come out near, not exactly at, 80/10/10.
    first = GroupShuffleSplit(n_splits=1, test_size=HELD_OUT, random_state=seed)
    train, held_out = next(first.split(positions, groups=groups))
    second = GroupShuffleSplit(n_splits=1, test_size=0.5, random_state=seed)
    val, test = next(second.split(held_out, groups=groups[held_out]))
    return _labels(len(image_ids), train, held_out[val], held_out[test])


def _labels(n: int, train, val, test) -> "np.ndarray":
    import numpy as np  # not at DAG parse time

    parts = np.empty(n, dtype=object)
    parts[train], parts[val], parts[test] = "train", "val", "test"
    return parts


def _check_covered(values: "pd.Series", path: Path) -> None:
    missing = values.index[values.isna()]
    if len(missing):
        first = ", ".join(missing[:5])
        raise SplitError(f"{path}: has no row for {len(missing)} image(s) of {ATTR_FILE} (first: {first})")
