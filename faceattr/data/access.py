"""Which folders the Airflow DAGs may read images from and write results to.

Anyone who can trigger a DAG can type a path into its form, so every path a DAG reads or writes
must lie under one of the roots in FACEATTR_DATA_ROOTS (os.pathsep-separated, like PATH).
Paths are checked after resolving symlinks and '..', before anything is read or written; when
a folder is scored, every file in it is checked the same way before it is opened (`inside`). A
refusal names only the path given. What the check cannot see: a hard link is the file itself, not
a pointer to it, so scoring refuses files with more than one link under the roots
(faceattr.engine.predict.REFUSED_HARD_LINK); a bind mount is a folder like any other.
Light on purpose: the DAG files import it at parse time.
"""
from __future__ import annotations

import os
from pathlib import Path

from faceattr import settings

ROOTS_ENV = settings.DATA_ROOTS


class AccessError(ValueError):
    """A path lies outside the allowed data roots, or the roots are not configured."""


def data_roots(value: str | None = None) -> list[Path]:
    """The allowed roots, resolved; `value` defaults to $FACEATTR_DATA_ROOTS."""
    if value is None:
        value = settings.data_roots()
    roots = [Path(os.path.realpath(Path(part).expanduser())) for part in value.split(os.pathsep) if part.strip()]
    if not roots:
        raise AccessError(
            f"{ROOTS_ENV} is not set: list the folders the pipeline may read and write, "
            f"separated by {os.pathsep!r} (e.g. {ROOTS_ENV}=/srv/faceattr/data)"
        )
    return roots


def check_path(path: str | os.PathLike, what: str = "path", *, roots: list[Path] | None = None) -> Path:
    """Return `path` resolved if it lies under an allowed root; raise AccessError naming it otherwise.

    `what` names the setting in the error ("images", "output CSV", ...). The path need not exist
    yet (an output file), but it must be absolute: a relative path would depend on the worker's
    current folder.
    """
    if roots is None:
        roots = data_roots()
    if path is None or (isinstance(path, str) and not path.strip()):
        raise AccessError(f"{what}: no path given")
    text = os.fspath(path)
    if not isinstance(text, str):
        raise AccessError(f"{what}: {path!r} is not a text path")
    if "\x00" in text:
        raise AccessError(f"{what}: {text!r} contains a NUL byte")
    candidate = Path(text).expanduser()
    if not candidate.is_absolute():
        raise AccessError(f"{what}: {text!r} is not an absolute path; give a full path under {_listing(roots)}")
    # realpath follows every symlink and folds '..', so neither can step outside a root.
    try:
        resolved = Path(os.path.realpath(candidate))
    except OSError as exc:  # a link swapped while it is resolved
        raise AccessError(f"{what}: {text}: cannot be resolved ({exc.strerror})") from None
    if not inside(resolved, roots):
        # Only the path given: where its links lead would tell whether an outside path exists.
        raise AccessError(f"{what}: {text} is outside the allowed data roots {_listing(roots)} ({ROOTS_ENV})")
    return resolved


def inside(resolved: str | os.PathLike, roots: list[Path]) -> bool:
    """Whether a path already resolved (os.path.realpath) lies under one of `roots`."""
    resolved = Path(resolved)
    return any(resolved == root or resolved.is_relative_to(root) for root in roots)


# The error row of a file inside an allowed folder whose link leads outside the roots. The same
# words whatever lies there (a file, a folder, nothing), so the errors file reveals nothing about it.
REFUSED_OUTSIDE = f"refused: the link leads outside the allowed data roots ({ROOTS_ENV})"


def _listing(roots: list[Path]) -> str:
    return ", ".join(str(root) for root in roots)
