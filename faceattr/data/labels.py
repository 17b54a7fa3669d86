"""The official CelebA label files: attribute names and parsers.

As distributed, `list_attr_celeba.txt` has a count line, a header line with the 40 names
(trailing space), then rows `NNNNNN.jpg` and 40 values of -1/1 split by runs of spaces, with
CRLF endings. `list_eval_partition.txt` (0 train, 1 val, 2 test) and `identity_CelebA.txt`
hold one `NNNNNN.jpg value` row per image and have no count or header line.

DAG files import this module at parse time, so numpy and pandas are imported inside functions.
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
import pandas as pd

from faceattr.attributes import ATTRIBUTES


# The official distribution has 202,599 images; the count line of the full list_attr file says so.
OFFICIAL_COUNT = 202_599

_BOMS = {b"\xef\xbb\xbf": "UTF-8", b"\xff\xfe": "UTF-16 LE", b"\xfe\xff": "UTF-16 BE"}


class LabelFileError(ValueError):
    """A label file is malformed; the message names the file, the line and its content."""


def looks_like_html(head: bytes) -> bool:
    """True when the bytes start an HTML page (what Google Drive serves when its quota is exceeded)."""
    start = head[:1024].lstrip().lower()
    return start.startswith((b"<!doctype html", b"<html")) or b"<html" in start[:200]


def read_attributes(path: str | os.PathLike) -> "pd.DataFrame":
    """`list_attr_celeba.txt` -> DataFrame indexed by image_id, 40 int8 columns of -1/1 in official order."""
    path = Path(path)
    data = _read_bytes(path)
    (count_line, header_line), body = _split_lines(path, data, 2)
    count = _parse_count(path, count_line)
    columns = _parse_header(path, header_line)
    frame = _read_attributes_as_distributed(body, columns)
    if frame is None or not _is_clean(frame, (-1, 1), count):
        frame = _read_table(path, body, columns, np.int8, allowed=(-1, 1), what="-1 or 1", first_line=3, count=count)
    return frame if columns == list(ATTRIBUTES) else frame[list(ATTRIBUTES)]


def read_partition(path: str | os.PathLike) -> "pd.Series":
    """`list_eval_partition.txt` -> Series[int8] named "partition" (0 train, 1 val, 2 test)."""
    return _read_one_value(path, "partition", np.int8, allowed=(0, 1, 2), what="0, 1 or 2")


def read_identity(path: str | os.PathLike) -> "pd.Series":
    """`identity_CelebA.txt` -> Series[int32] named "identity"."""
    return _read_one_value(path, "identity", np.int32, allowed=None, what="an identity number (0 to 2**31-1)")


# -- helpers ------------------------------------------------------------------------------------
def _read_one_value(path, name: str, dtype, allowed: tuple[int, ...] | None, what: str) -> "pd.Series":
    path = Path(path)
    body = _read_bytes(path)
    frame = _read_table(path, body, [name], dtype, allowed=allowed, what=what, first_line=1, count=None)
    return frame[name]


def _read_attributes_as_distributed(body: bytes, columns: list[str]) -> "pd.DataFrame | None":
    """The fastest path, for rows laid out exactly as the official file; None for any other layout.

    As distributed, a row is a name of fixed width, one space, the first value ("-1" or "1"), then
    each later value right-aligned in three bytes (" -1" or "  1"), then CRLF or LF. numpy reads
    every row's fixed-width tail at once, which is several times faster than a CSV parser.
    """
    buf = np.frombuffer(body, dtype=np.uint8)
    ends = np.flatnonzero(buf == ord("\n"))
    if len(ends) == 0 or ends[-1] != len(buf) - 1:
        return None
    starts = np.concatenate(([0], ends[:-1] + 1))
    stops = ends - (buf[ends - 1] == ord("\r"))  # where each row's text stops
    tail_width = 3 * (len(columns) - 1)
    if (stops - starts < tail_width + 3).any():  # too short for a name, a space and the first value
        return None
    tail_starts = stops - tail_width
    rows_from = np.lib.stride_tricks.sliding_window_view  # rows_from(buf, w)[i] = buf[i : i + w], no copy
    tail = rows_from(buf, tail_width)[tail_starts].reshape(len(ends), len(columns) - 1, 3)
    first_negative = buf[tail_starts - 2] == ord("-")
    name_ends = tail_starts - 2 - first_negative  # the space before the first value
    name_width = int(name_ends[0] - starts[0])
    laid_out = (
        (tail[:, :, 0] == ord(" ")).all()
        and ((tail[:, :, 1] == ord(" ")) | (tail[:, :, 1] == ord("-"))).all()
        and (tail[:, :, 2] == ord("1")).all()
        and (buf[tail_starts - 1] == ord("1")).all()
        and (buf[name_ends] == ord(" ")).all()
        and name_width > 0
        and (name_ends - starts == name_width).all()
    )
    if not laid_out:
        return None
    names = rows_from(buf, name_width)[starts]
    if not (names > ord(" ")).all():
        return None
    try:
        index = pd.Index(names.view(f"S{name_width}").ravel().astype(str), dtype=str, name="image_id")
    except UnicodeDecodeError:
        return None
    values = np.empty((len(ends), len(columns)), dtype=np.int8)
    minus, plus = np.int8(-1), np.int8(1)
    values[:, 0] = np.where(first_negative, minus, plus)
    values[:, 1:] = np.where(tail[:, :, 1] == ord("-"), minus, plus)
    return pd.DataFrame(values, index=index, columns=columns)


def _read_table(
    path: Path, body: bytes, columns: list[str], dtype, *,
    allowed: tuple[int, ...] | None, what: str, first_line: int, count: int | None,
) -> "pd.DataFrame":
    """Rows of an image name and one integer per column -> DataFrame indexed by image_id.

    pandas' C parser reads a well-formed file fast (runs of spaces, LF or CRLF); when it fails or
    the result does not pass the checks, the line-by-line parser reads the file again: it accepts
    any whitespace, and on bad input says which line is wrong.
    """
    frame = _read_table_fast(body, columns, dtype)
    if frame is not None and _is_clean(frame, allowed, count):
        return frame
    names, values, line_numbers = _parse_rows(path, body, len(columns), first_line)
    _check_values(path, body, values, line_numbers, first_line, allowed, what)
    _check_unique(path, names, line_numbers)
    if count is not None and len(names) != count:
        raise LabelFileError(f"{path}, line 1: the count line says {count} images but the file has {len(names)} rows")
    return pd.DataFrame(values.astype(dtype), index=pd.Index(names, dtype=str, name="image_id"), columns=columns)


def _read_table_fast(body: bytes, columns: list[str], dtype) -> "pd.DataFrame | None":
    """Rows split on single spaces or runs of spaces (LF or CRLF), or None where pandas cannot read them."""
    try:
        frame = pd.read_csv(
            io.BytesIO(body), sep=" ", skipinitialspace=True, header=None, names=["image_id", *columns],
            index_col="image_id", dtype={"image_id": str, **{c: dtype for c in columns}},
            na_filter=False, quoting=csv.QUOTE_NONE, engine="c",
        )
    except (ValueError, OverflowError, pd.errors.ParserError):
        return None
    return frame


def _is_clean(frame: "pd.DataFrame", allowed: tuple[int, ...] | None, count: int | None) -> bool:
    """Whether a fast parse passes every check; if not, the line-by-line parser finds the bad line."""
    values = frame.to_numpy()
    if allowed is not None:
        values_ok = np.logical_or.reduce([values == v for v in allowed]).all()
    else:
        values_ok = (values >= 0).all()
    return bool(
        len(frame) > 0 and values_ok and frame.index.is_unique
        and (count is None or len(frame) == count)
    )


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: label file not found")
    data = path.read_bytes()
    for bom, kind in _BOMS.items():
        if data.startswith(bom):
            raise LabelFileError(
                f"{path}, line 1: starts with a {kind} byte-order mark (BOM); "
                "CelebA label files are plain ASCII, save it without the BOM"
            )
    if looks_like_html(data):
        raise LabelFileError(f"{path}, line 1: this is an HTML page, not a CelebA label file")
    if not data or data.isspace():
        raise LabelFileError(f"{path}: the file is empty")
    return data


def _split_lines(path: Path, data: bytes, n: int) -> tuple[list[bytes], bytes]:
    """The first `n` lines and the rest of the file."""
    parts = data.split(b"\n", n)
    if len(parts) <= n:
        raise LabelFileError(f"{path}: the file ends after {len(parts)} line(s); expected {n} header lines and rows")
    return parts[:n], parts[n]


def _show(line: bytes, limit: int = 120) -> str:
    text = line.decode("utf-8", errors="replace").rstrip("\r\n")
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _parse_count(path: Path, line: bytes) -> int:
    fields = line.split()
    if len(fields) != 1 or not fields[0].isdigit():
        raise LabelFileError(f"{path}, line 1: expected the number of images, found {_show(line)}")
    return int(fields[0])


def _parse_header(path: Path, line: bytes) -> list[str]:
    names = line.decode("ascii", errors="replace").split()
    unknown = [name for name in names if name not in ATTRIBUTES]
    if unknown:
        raise LabelFileError(f"{path}, line 2: unknown attribute name(s) {', '.join(map(repr, unknown))}")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise LabelFileError(f"{path}, line 2: attribute name(s) repeated: {', '.join(repeated)}")
    missing = [name for name in ATTRIBUTES if name not in names]
    if missing:
        raise LabelFileError(f"{path}, line 2: missing attribute name(s) {', '.join(missing)}")
    return names


def _parse_rows(path: Path, body: bytes, n_values: int, first_line: int):
    """General parser: rows of a name and `n_values` integers split on runs of whitespace.

    Returns (names, values as an int64 array rows x n_values, the line number of each row).
    Blank lines are skipped.
    """
    names: list[str] = []
    rows: list[list[bytes]] = []
    line_numbers: list[int] = []
    for number, line in enumerate(body.split(b"\n"), start=first_line):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != n_values + 1:
            raise LabelFileError(
                f"{path}, line {number}: expected an image name and {n_values} value(s), "
                f"found {len(fields)} field(s): {_show(line)}"
            )
        try:
            names.append(fields[0].decode("ascii"))
        except UnicodeDecodeError:
            raise LabelFileError(f"{path}, line {number}: the image name is not ASCII: {_show(line)}") from None
        rows.append(fields[1:])
        line_numbers.append(number)
    if not rows:
        raise LabelFileError(f"{path}: no rows")
    try:
        values = np.array(rows).astype(np.int64)
    except (ValueError, OverflowError):
        for number, fields in zip(line_numbers, rows):
            for field in fields:
                if not field.lstrip(b"-").isdigit() or len(field) > 12:
                    raise LabelFileError(
                        f"{path}, line {number}: {_show(field)} is not an integer: "
                        f"{_show(_line(body, number - first_line))}"
                    ) from None
        raise
    return names, values, np.asarray(line_numbers)


def _line(body: bytes, index: int) -> bytes:
    return body.split(b"\n")[index]


def _check_values(path, body, values, line_numbers, first_line, allowed, what) -> None:
    if allowed is not None:
        bad = ~np.isin(values, allowed)
    else:  # identity numbers: stored as int32
        bad = (values < 0) | (values > np.iinfo(np.int32).max)
    if bad.any():
        row, column = np.argwhere(bad)[0]
        number = int(line_numbers[row])
        raise LabelFileError(
            f"{path}, line {number}: value {int(values[row, column])} in column {column + 2} is not {what}: "
            f"{_show(_line(body, number - first_line))}"
        )


def _check_unique(path, names: list[str], line_numbers) -> None:
    index = pd.Index(names)
    if index.has_duplicates:
        second = int(index.duplicated().argmax())
        first = names.index(names[second])
        raise LabelFileError(
            f"{path}, line {int(line_numbers[second])}: image {names[second]!r} is listed again "
            f"(first on line {int(line_numbers[first])})"
        )
