"""What `predict` reads and writes: which files of a folder or zip are listed, how their names are
written into the CSV, where the CSVs may go, and how they are written.

- image_id is the file's path relative to the folder (or its zip entry name), escaped by one rule
  that `file_name(image_id)` reverses exactly: a backslash is written as \\\\, and as \\xNN
  (lowercase hex) each byte of a name that is not UTF-8, of a control character (C0, DEL, C1, the
  Unicode line and paragraph separators: CR, LF and TAB included), and of a first character that a
  spreadsheet would start a formula with (=, +, -, @). So every cell is one line of plain text that
  no spreadsheet evaluates.
- Symlinks are followed, to files and to folders; a linked folder's files are listed under the
  link's name. Every real folder (device and inode) is listed once, however it is reached: a link
  to a folder already listed (a loop), to a folder inside the scored folder, or to a folder that
  holds the scored folder gets one error row. A file whose metadata cannot be read gets an error row.
- With `roots` (FACEATTR_DATA_ROOTS, the DAG's scoring), every file's resolved path is checked
  against them before it is opened; a file or link leading outside gets the error row
  faceattr.data.access.REFUSED_OUTSIDE, the same whatever lies there. A hard link cannot be told
  from the original, so with `roots` a file with more than one link is refused too
  (REFUSED_HARD_LINK).
- The output is refused before any work unless it is a .csv path outside the images folder and
  outside every run folder (RUN/private_predictions.csv excepted), and unless what it would replace
  is a CSV this module wrote. Both CSVs are written under temporary names and renamed only once
  both are complete.
- Only hidden files and folders (names starting with "." and macOS's __MACOSX) are ignored.
"""
from __future__ import annotations

import os
import re
import stat
import zipfile
from collections import Counter
from pathlib import Path, PurePosixPath

from faceattr.attributes import ATTRIBUTES
from faceattr.data.access import REFUSED_OUTSIDE, inside
from faceattr.fsutil import atomic_paths, raise_if_full
from faceattr.run.layout import RunLayout


def list_folder(folder: Path, roots: list[Path] | None = None, refused: dict[str, str] | None = None) -> list[str]:
    """Every non-hidden file under `folder` as a relative POSIX path, sorted. Entries refused on the
    way go into `refused` ({relative path: reason}); the module docstring gives the rules."""
    refused = {} if refused is None else refused
    top = os.stat(folder)
    listed = {(top.st_dev, top.st_ino)}  # real folders (device, inode) whose files are listed
    found: list[str] = []
    pending = [(os.fspath(folder), "")]
    while pending:
        directory, prefix = pending.pop()
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            refused[prefix.rstrip("/") or "."] = f"cannot list the folder ({exc.strerror})"
            continue
        for entry in entries:
            if hidden(entry.name):
                continue
            relative = prefix + entry.name
            try:  # a file swapped or removed while it is listed: its own error row, not the end of the run
                reason, subfolder = _classify(entry, folder, listed, roots)
            except OSError as exc:
                reason, subfolder = f"cannot read its metadata ({exc.strerror or exc})", False
            if reason:
                refused[relative] = reason
            elif subfolder:
                pending.append((entry.path, relative + "/"))
            else:
                found.append(relative)
    return sorted(found)


def _classify(entry: os.DirEntry, top: Path, listed: set, roots: list[Path] | None) -> tuple[str, bool]:
    """(error reason or "", whether to walk into it) for one folder entry; `listed` grows."""
    if entry.is_symlink():
        if roots is not None and not inside(os.path.realpath(entry.path), roots):
            return REFUSED_OUTSIDE, False  # decided before anything about the target is read
        try:
            info = os.stat(entry.path)
        except FileNotFoundError:
            return "", False  # a dangling link: reading it says so
        if stat.S_ISDIR(info.st_mode):
            if (info.st_dev, info.st_ino) in listed or _holds(info, top):
                return "symlink to a folder whose files are already listed; not followed twice", False
            if inside(os.path.realpath(entry.path), [Path(os.path.realpath(top))]):
                return "symlink to a folder whose files are already listed; not followed twice", False
            listed.add((info.st_dev, info.st_ino))
            return "", True
    else:
        info = entry.stat(follow_symlinks=False)
        if stat.S_ISDIR(info.st_mode):
            if (info.st_dev, info.st_ino) in listed:  # a bind mount of a folder already listed
                return "a folder whose files are already listed; not listed twice", False
            listed.add((info.st_dev, info.st_ino))
            return "", True
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file (a device, pipe or socket)", False
    if roots is not None and info.st_nlink > 1:
        return REFUSED_HARD_LINK, False
    return "", False


def _holds(info: os.stat_result, top: Path) -> bool:
    """Whether the folder `info` is `top` or one of its ancestors (a link up the tree)."""
    path = Path(os.path.realpath(top))
    for folder in (path, *path.parents):
        here = os.stat(folder)
        if (here.st_dev, here.st_ino) == (info.st_dev, info.st_ino):
            return True
    return False


def guard(path: Path, roots: list[Path]) -> str:
    """The error row of a file that may not be opened under `roots`, or "" (checked again at read time)."""
    try:
        if not inside(os.path.realpath(path), roots):
            return REFUSED_OUTSIDE
        info = os.stat(path)
    except FileNotFoundError:
        return ""  # reading it says "file not found"
    except OSError as exc:
        return f"cannot read its metadata ({exc.strerror or exc})"
    return REFUSED_HARD_LINK if stat.S_ISREG(info.st_mode) and info.st_nlink > 1 else ""


# With FACEATTR_DATA_ROOTS set, a hard link is refused: it cannot be told from the original, which
# may lie outside the roots.
REFUSED_HARD_LINK = "refused: the file has more than one hard link, which may lead outside the allowed data roots"


def list_zip(archive: Path) -> list[str]:
    """Names of the non-hidden file entries of a zip, sorted; refuses unsafe or duplicate names."""
    try:
        with zipfile.ZipFile(archive) as handle:
            names = [info.filename for info in handle.infolist() if not info.is_dir()]
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValueError(f"{archive}: not a readable zip archive ({exc})") from None
    kept = []
    for name in names:
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name) or ".." in parts:
            raise ValueError(f"{archive}: refused: entry {name!r} has an absolute path or '..'")
        if not any(hidden(part) for part in parts):
            kept.append(name)
    duplicates = sorted(name for name, count in Counter(kept).items() if count > 1)
    if duplicates:
        raise ValueError(f"{archive}: refused: duplicate entries {', '.join(duplicates[:5])}")
    return sorted(kept)


# Characters no CSV cell may hold as they are: C0 controls (TAB, LF, CR...), DEL, C1 controls and
# the Unicode line/paragraph separators, which some readers take for line breaks.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
FORMULA_PREFIXES = ("=", "+", "-", "@")  # a spreadsheet starts a formula with these


def csv_name(name: str | bytes) -> str:
    """The image_id written for a file name; the module docstring gives the rule, `file_name` undoes it."""
    raw = os.fsencode(name) if isinstance(name, str) else name
    text = raw.replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")
    return _escape_first(_escape(text))


def _escape(text: str) -> str:
    """`text` with every byte of an unsafe character as \\xNN (backslashes are the caller's)."""
    return _UNSAFE.sub(lambda m: "".join(f"\\x{b:02x}" for b in m.group().encode("utf-8")), text)


def _escape_first(text: str) -> str:
    if text.startswith(FORMULA_PREFIXES):
        return f"\\x{ord(text[0]):02x}" + text[1:]
    return text


def file_name(image_id: str) -> str:
    """The file name (as os functions take it) that `csv_name` wrote as `image_id`."""
    raw = re.sub(rb"\\(\\|x[0-9a-f]{2})", lambda m: b"\\" if m.group(1) == b"\\" else bytes.fromhex(
        m.group(1)[1:].decode()), image_id.encode("utf-8"))
    return os.fsdecode(raw)


def errors_path(out_csv: Path) -> Path:
    """Where the unreadable files of `out_csv` are listed: `<stem>.errors.csv` beside it."""
    return out_csv.with_name(out_csv.stem + ".errors.csv")


def check_output(out_csv: Path, images: Path) -> None:
    """Refuse, naming it, an output that could destroy something, before any image is scored: the
    module docstring gives the rules."""
    if out_csv.is_dir():
        raise IsADirectoryError(f"{out_csv}: is a folder; give the path of the .csv file to write")
    if out_csv.suffix.lower() != ".csv":
        raise ValueError(f"{out_csv}: not a .csv path; give the path of the .csv file to write (e.g. preds.csv)")
    real = Path(os.path.realpath(out_csv))
    if images.is_dir() and inside(real, [Path(os.path.realpath(images))]):
        raise ValueError(f"{out_csv}: inside the images folder {images}; write the CSV somewhere else")
    for folder in list(real.parents)[:2]:  # every run-folder path is RUN/name or RUN/sub/name
        layout = RunLayout(folder)
        if layout.config.is_file() and any(path.exists() for path in (layout.split, layout.model, layout.checkpoints)):
            if real != Path(os.path.realpath(layout.private_predictions)):
                raise ValueError(f"{out_csv}: inside the run folder {folder}, whose files belong to its stages; "
                                 f"write the CSV elsewhere (or as {layout.private_predictions})")
            break
    for path in (out_csv, errors_path(out_csv)):
        if path.exists() and not _ours(path):
            raise FileExistsError(f"{path}: exists and is not a predictions CSV; remove it or choose another --out")
    try:
        out_csv.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(exc.errno, f"{out_csv}: cannot create its folder ({exc.strerror})") from None
    if not os.access(out_csv.parent, os.W_OK | os.X_OK):
        raise PermissionError(f"{out_csv}: its folder {out_csv.parent} is not writable")


def _ours(path: Path) -> bool:
    """Whether an existing file is a CSV this module wrote (or empty), so replacing it loses nothing else."""
    if not path.is_file():
        return False
    with open(path, "rb") as handle:
        head = handle.read(64)
    return head == b"" or head.startswith((f"image_id,{ATTRIBUTES[0]},".encode(), b"image_id,reason\n"))


def write_outputs(table, error_table, out_csv: Path, errors_csv: Path) -> None:
    """Both CSVs under temporary names, renamed only once both are complete."""
    with atomic_paths(out_csv, errors_csv) as (tmp_out, tmp_errors):
        for frame, tmp, target, options in ((table, tmp_out, out_csv, {"float_format": "%.6f"}),
                                            (error_table, tmp_errors, errors_csv, {"index": False})):
            try:
                frame.to_csv(tmp, **options)
            except OSError as exc:
                raise_if_full(exc, target)  # "nothing was replaced": true, neither file has been renamed
                raise OSError(exc.errno, f"{target}: cannot write it ({exc.strerror}); nothing was replaced") from None


def hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"
