"""faceattr.data.subset: a random subset of a CelebA folder that acquire reads like the whole."""
from __future__ import annotations

import pytest

from faceattr.data.download import acquire
from faceattr.data.labels import read_attributes, read_partition
from faceattr.data.layout import ATTR_FILE, PARTITION_FILE, celeba_dir, images_dir
from faceattr.data.subset import subsample


def test_a_subset_of_a_zip_source_is_acquired_with_its_labels(synth_source, tmp_path):
    result = subsample(synth_source, tmp_path / "subset", 30, seed=3)
    assert (result["images"], result["of"], result["status"]) == (30, 120, "written")
    acquire(str(tmp_path / "subset"), tmp_path / "root")
    labels = read_attributes(celeba_dir(tmp_path / "root") / ATTR_FILE)
    whole = read_attributes(synth_source / ATTR_FILE)
    assert len(labels) == 30 and set(labels.index) < set(whole.index)
    assert (labels == whole.loc[labels.index]).all().all()
    partition = read_partition(celeba_dir(tmp_path / "root") / PARTITION_FILE)
    assert (partition == read_partition(synth_source / PARTITION_FILE).loc[partition.index]).all()
    assert sorted(p.name for p in images_dir(tmp_path / "root").iterdir()) == sorted(labels.index)
    # Same source, n and seed: kept; an extracted folder works as a source too.
    assert subsample(synth_source, tmp_path / "subset", 30, seed=3)["status"] == "up-to-date"
    other = subsample(celeba_dir(tmp_path / "root"), tmp_path / "smaller", 10, seed=4)
    assert other["of"] == 30 and len(read_attributes(tmp_path / "smaller" / ATTR_FILE)) == 10
    # Another seed or another source, same n: drawn again, not the old subset reused.
    first = set(read_attributes(tmp_path / "subset" / ATTR_FILE).index)
    assert subsample(synth_source, tmp_path / "subset", 30, seed=4)["status"] == "written"
    assert set(read_attributes(tmp_path / "subset" / ATTR_FILE).index) != first
    assert subsample(celeba_dir(tmp_path / "root"), tmp_path / "subset", 30, seed=4)["status"] == "written"
    with pytest.raises(ValueError, match="more than the 120 labelled images"):
        subsample(synth_source, tmp_path / "too-many", 121)
