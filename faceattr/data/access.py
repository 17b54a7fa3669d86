"""Which folders the Airflow DAGs may read images from and write results to.

Anyone who can trigger a DAG can type a path into its form, so every path a DAG reads or writes
must lie under one of the roots in FACEATTR_DATA_ROOTS (os.pathsep-separated, like PATH).
Paths are checked after resolving symlinks and '..', before anything is read or written.
Light on purpose: the DAG files import it at parse time.
"""
from __future__ import annotations

import os
from pathlib import Path

ROOTS_ENV = "FACEATTR_DATA_ROOTS"


class AccessError(ValueError):
    """A path lies outside the allowed data roots, or the roots are not configured."""


def data_roots(value: str | None = None) -> list[Path]:
    """The allowed roots, resolved; `value` defaults to $FACEATTR_DATA_ROOTS."""
    if value is None:
        value = os.environ.get(ROOTS_ENV, "")
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
    resolved = Path(os.path.realpath(candidate))
    if not any(resolved == root or resolved.is_relative_to(root) for root in roots):
        shown = text if str(resolved) == text else f"{text!r} (resolves to {resolved})"
        raise AccessError(f"{what}: {shown} is outside the allowed data roots {_listing(roots)} ({ROOTS_ENV})")
    return resolved


def _listing(roots: list[Path]) -> str:
    return ", ".join(str(root) for root in roots)
