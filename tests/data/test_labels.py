"""faceattr.data.labels: the official label files, as distributed and malformed."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from faceattr.data import labels
from faceattr.attributes import ATTRIBUTES
from faceattr.data.labels import LabelFileError, read_attributes, read_identity, read_partition

OFFICIAL_MD5 = {
    "list_attr_celeba.txt": "75e246fa4810816ffd6ee81facbd244c",
    "list_eval_partition.txt": "d32c9cbf5e040fd4025c592c306e6668",
    "identity_CelebA.txt": "32bd1bd63d3c78cd57e08160ec5ed1e2",
}


def official_row(name: str, values) -> str:
    """A row as the official file writes it: the first value, then the rest right-aligned in width 2."""
    return f"{name} {values[0]}" + "".join(f" {v:2d}" for v in values[1:])


def write_attr_file(path: Path, table: np.ndarray, names=None, *, count=None, header=None, eol="\r\n") -> Path:
    names = names or [f"{i + 1:06d}.jpg" for i in range(len(table))]
    lines = [str(len(table) if count is None else count), " ".join(header or ATTRIBUTES) + " "]
    lines += [official_row(name, row) for name, row in zip(names, table)]
    path.write_bytes((eol.join(lines) + eol).encode())
    return path


def random_table(n: int, seed: int = 0) -> np.ndarray:
    return np.where(np.random.default_rng(seed).random((n, len(ATTRIBUTES))) < 0.3, 1, -1)


def simple_parse(path: Path) -> tuple[int, list[str], dict[str, list[int]]]:
    """An independent, obviously correct parse of list_attr_celeba.txt to compare against."""
    lines = path.read_text().splitlines()
    rows = [line.split() for line in lines[2:] if line.strip()]
    return int(lines[0]), lines[1].split(), {row[0]: [int(v) for v in row[1:]] for row in rows}


# -- the attribute file -------------------------------------------------------------------------
def test_reads_the_distributed_format(tmp_path):
    table = random_table(25)
    frame = read_attributes(write_attr_file(tmp_path / "list_attr_celeba.txt", table))
    assert list(frame.columns) == list(ATTRIBUTES)
    assert frame.index.name == "image_id"
    assert frame.index[0] == "000001.jpg" and frame.index[-1] == "000025.jpg"
    assert set(frame.dtypes) == {np.dtype("int8")}
    np.testing.assert_array_equal(frame.to_numpy(), table)


@pytest.mark.parametrize("eol", ["\n", "\r\n"])
def test_other_whitespace_goes_through_the_general_parser(tmp_path, eol):
    table = random_table(12, seed=1)
    names = [f"{i:06d}.jpg" for i in range(1, 13)]
    lines = ["12", "\t".join(ATTRIBUTES)]
    lines += [name + "\t" + "   ".join(str(v) for v in row) + "  " for name, row in zip(names, table)]
    path = tmp_path / "attrs.txt"
    path.write_text(eol.join(lines) + eol + eol)  # tabs, runs of spaces, trailing spaces, a blank last line
    frame = read_attributes(path)
    assert list(frame.index) == names
    np.testing.assert_array_equal(frame.to_numpy(), table)


def test_reordered_header_gives_official_column_order(tmp_path):
    table = random_table(6, seed=2)
    order = list(reversed(ATTRIBUTES))
    # Column j of the file holds attribute order[j]; write the table reversed to match.
    path = write_attr_file(tmp_path / "attrs.txt", table[:, ::-1], header=order)
    frame = read_attributes(path)
    assert list(frame.columns) == list(ATTRIBUTES)
    np.testing.assert_array_equal(frame.to_numpy(), table)


def test_the_three_parsers_agree(tmp_path, monkeypatch):
    path = write_attr_file(tmp_path / "attrs.txt", random_table(40, seed=3))
    as_distributed = read_attributes(path)
    monkeypatch.setattr(labels, "_read_attributes_as_distributed", lambda *args: None)
    with_pandas = read_attributes(path)
    monkeypatch.setattr(labels, "_read_table_fast", lambda *args: None)
    line_by_line = read_attributes(path)
    assert as_distributed.equals(with_pandas) and as_distributed.equals(line_by_line)
    assert list(line_by_line.index) == list(as_distributed.index)


LAYOUTS = {
    "official CRLF": lambda name, row: official_row(name, row),
    "single spaces": lambda name, row: name + " " + " ".join(map(str, row)),
    "tabs": lambda name, row: name + "\t" + "\t".join(map(str, row)),
    "all width 2": lambda name, row: name + "".join(f" {v:2d}" for v in row),
    "padded end": lambda name, row: official_row(name, row) + "   ",
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("names", ["same width", "mixed width"])
@pytest.mark.parametrize("ending", ["\r\n", "\n", "none"])
def test_layouts_parse_to_the_same_table(tmp_path, layout, names, ending):
    table = random_table(9, seed=5)
    image_ids = [f"{i:06d}.jpg" if names == "same width" else f"{10 ** i}.jpg" for i in range(9)]
    lines = ["9", " ".join(ATTRIBUTES) + " ", *(LAYOUTS[layout](n, row) for n, row in zip(image_ids, table))]
    eol = "\n" if ending == "none" else ending
    path = tmp_path / "attrs.txt"
    path.write_bytes((eol.join(lines) + ("" if ending == "none" else eol)).encode())
    frame = read_attributes(path)
    assert list(frame.index) == image_ids
    np.testing.assert_array_equal(frame.to_numpy(), table)


def attr_lines(n: int = 4) -> list[str]:
    table = random_table(n, seed=4)
    return [str(n), " ".join(ATTRIBUTES) + " ", *[official_row(f"{i:06d}.jpg", row) for i, row in enumerate(table, 1)]]


def break_line(lines: list[str], index: int, new: str) -> list[str]:
    lines = list(lines)
    lines[index] = new
    return lines


def set_value(lines: list[str], index: int, column: int, value: str) -> list[str]:
    fields = lines[index].split()
    fields[column] = value
    return break_line(lines, index, " ".join(fields))


BAD_ATTR_FILES = {
    "too few values": (lambda L: break_line(L, 3, L[3].rsplit(" ", 1)[0]), "line 4", "found 40 field(s)"),
    "too many values": (lambda L: break_line(L, 4, L[4] + "  1"), "line 5", "found 42 field(s)"),
    "value 2": (lambda L: set_value(L, 2, 40, "2"), "line 3", "value 2 in column 41 is not -1 or 1"),
    "value 0": (lambda L: set_value(L, 5, 1, "0"), "line 6", "value 0 in column 2 is not -1 or 1"),
    "not a number": (lambda L: set_value(L, 3, 7, "x"), "line 4", "'x' is not an integer"),
    "count too high": (lambda L: break_line(L, 0, "5"), "line 1", "says 5 images but the file has 4 rows"),
    "count not a number": (lambda L: break_line(L, 0, "four"), "line 1", "expected the number of images"),
    "duplicate name": (lambda L: break_line(L, 4, L[4].replace("000003.jpg", "000001.jpg")), "line 5",
                       "'000001.jpg' is listed again (first on line 3)"),
    "unknown header name": (lambda L: break_line(L, 1, L[1].replace("Smiling", "Smiles")), "line 2",
                            "unknown attribute name(s) 'Smiles'"),
    "missing header name": (lambda L: break_line(L, 1, L[1].replace("Young", "")), "line 2",
                            "missing attribute name(s) Young"),
    "repeated header name": (lambda L: break_line(L, 1, L[1].replace("Young", "Male")), "line 2", "repeated: Male"),
}


@pytest.mark.parametrize("case", sorted(BAD_ATTR_FILES))
def test_bad_attribute_files_name_file_line_and_content(tmp_path, case):
    edit, where, what = BAD_ATTR_FILES[case]
    path = tmp_path / "list_attr_celeba.txt"
    path.write_bytes(("\r\n".join(edit(attr_lines())) + "\r\n").encode())
    with pytest.raises(LabelFileError) as info:
        read_attributes(path)
    message = str(info.value)
    assert str(path) in message and f"{where}:" in message and what in message, message


def test_bad_row_error_quotes_the_line(tmp_path):
    lines = attr_lines()
    lines[3] = lines[3][:-2] + " 7"
    path = tmp_path / "attrs.txt"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(LabelFileError, match=r"line 4: value 7 in column 41 is not -1 or 1: '000002\.jpg"):
        read_attributes(path)


@pytest.mark.parametrize("bom", [b"\xef\xbb\xbf", b"\xff\xfe"])
def test_byte_order_mark_is_refused(tmp_path, bom):
    path = tmp_path / "attrs.txt"
    path.write_bytes(bom + ("\r\n".join(attr_lines()) + "\r\n").encode())
    with pytest.raises(LabelFileError, match=r"attrs\.txt, line 1: starts with a .*byte-order mark"):
        read_attributes(path)


@pytest.mark.parametrize("reader", [read_attributes, read_partition, read_identity])
def test_html_page_and_empty_and_absent_files(tmp_path, reader):
    page = tmp_path / "page.txt"
    page.write_text("<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head></html>")
    with pytest.raises(LabelFileError, match=r"page\.txt, line 1: this is an HTML page"):
        reader(page)
    empty = tmp_path / "empty.txt"
    empty.write_text("\r\n")
    with pytest.raises(LabelFileError, match=r"empty\.txt"):
        reader(empty)
    with pytest.raises(FileNotFoundError, match=r"absent\.txt"):
        reader(tmp_path / "absent.txt")


# -- partition and identity ---------------------------------------------------------------------
def test_partition_and_identity(tmp_path):
    part = tmp_path / "list_eval_partition.txt"
    part.write_bytes(b"000001.jpg 0\r\n000002.jpg 2\r\n000003.jpg 1\r\n")
    series = read_partition(part)
    assert series.name == "partition" and series.index.name == "image_id" and series.dtype == np.int8
    assert series.to_dict() == {"000001.jpg": 0, "000002.jpg": 2, "000003.jpg": 1}

    ident = tmp_path / "identity_CelebA.txt"
    ident.write_bytes(b"000001.jpg 2880\r\n000002.jpg 2937\r\n000003.jpg 8692\r\n")
    series = read_identity(ident)
    assert series.name == "identity" and series.dtype == np.int32
    assert series.to_dict() == {"000001.jpg": 2880, "000002.jpg": 2937, "000003.jpg": 8692}


@pytest.mark.parametrize(
    "reader, text, where, what",
    [
        (read_partition, "000001.jpg 0\n000002.jpg 3\n", "line 2", "value 3 in column 2 is not 0, 1 or 2"),
        (read_partition, "000001.jpg 0\n000002.jpg\n", "line 2", "found 1 field(s)"),
        (read_partition, "000001.jpg 0\n000002.jpg 1 1\n", "line 2", "found 3 field(s)"),
        (read_partition, "000001.jpg 0\n000002.jpg 1\n000001.jpg 2\n", "line 3", "listed again (first on line 1)"),
        (read_identity, "000001.jpg 12\n000002.jpg -4\n", "line 2", "value -4 in column 2 is not an identity"),
        (read_identity, "000001.jpg 12\n000002.jpg 1.5\n", "line 2", "'1.5' is not an integer"),
        (read_identity, "000001.jpg 12\n000002.jpg 99999999999\n", "line 2", "is not an identity number"),
    ],
)
def test_bad_partition_and_identity_files(tmp_path, reader, text, where, what):
    path = tmp_path / "labels.txt"
    path.write_text(text)
    with pytest.raises(LabelFileError) as info:
        reader(path)
    message = str(info.value)
    assert str(path) in message and f"{where}:" in message and what in message, message


# -- real data ------------------------------------------------------------------------------------
@pytest.mark.realdata
def test_sample_labels_equal_an_independent_parse(celeba_sample):
    path = celeba_sample / "list_attr_celeba.txt"
    count, header, rows = simple_parse(path)
    frame = read_attributes(path)
    assert len(frame) == count == len(rows) == 4560
    assert header == list(ATTRIBUTES) == list(frame.columns)
    assert list(frame.index) == list(rows)
    np.testing.assert_array_equal(frame.to_numpy(), np.array(list(rows.values())))

    partition = read_partition(celeba_sample / "list_eval_partition.txt")
    identity = read_identity(celeba_sample / "identity_CelebA.txt")
    expected_identity = dict(line.split() for line in (celeba_sample / "identity_CelebA.txt").read_text().splitlines())
    assert list(identity.index) == list(frame.index)
    assert identity.to_dict() == {k: int(v) for k, v in expected_identity.items()}
    assert set(partition.index) == set(frame.index)


@pytest.mark.realdata
def test_full_official_files(celeba_annotations, monkeypatch):
    for name, md5 in OFFICIAL_MD5.items():
        assert hashlib.md5((celeba_annotations / name).read_bytes()).hexdigest() == md5, name

    # The official layout must take the fastest path; the partition and identity files pandas' one.
    def slower_path(*args, **kwargs):
        raise AssertionError("fell back to a slower parser")

    monkeypatch.setattr(labels, "_parse_rows", slower_path)
    real_read_table = labels._read_table
    monkeypatch.setattr(labels, "_read_table", slower_path)
    frame = read_attributes(celeba_annotations / "list_attr_celeba.txt")
    monkeypatch.setattr(labels, "_read_table", real_read_table)
    partition = read_partition(celeba_annotations / "list_eval_partition.txt")
    identity = read_identity(celeba_annotations / "identity_CelebA.txt")

    assert frame.shape == (202_599, 40) and frame.index.is_unique
    assert frame.index[0] == "000001.jpg" and frame.index[-1] == "202599.jpg"
    assert set(np.unique(frame.to_numpy())) == {-1, 1}
    # Spot-check against the text: the first row and one deep in the file.
    lines = (celeba_annotations / "list_attr_celeba.txt").read_text().splitlines()
    for line in (lines[2], lines[100_002]):
        name, *values = line.split()
        assert frame.loc[name].tolist() == [int(v) for v in values]
    assert partition.value_counts().sort_index().tolist() == [162_770, 19_867, 19_962]
    assert (partition.index == frame.index).all() and (identity.index == frame.index).all()
    assert identity.nunique() == 10_177 and identity.min() == 1 and identity.max() == 10_177
