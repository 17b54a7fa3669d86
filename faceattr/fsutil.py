"""Atomic file writes: write to a temporary name beside the target, then rename.

A reader never sees a half-written file, and an interrupted write leaves only a `.tmp-*`
file that nothing trusts; the next successful write of the same file removes such leftovers.
A full disk is reported as "no space left on device" with the file's name.

Also the one sha256 mechanism: `file_entry` ({"sha256", "size"}, the object-store manifest's
entry) and the `<file>.sha256` digest written beside checkpoints and model.pt (sha256sum's format,
so `sha256sum -c model.pt.sha256` checks it too).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

# A `.tmp-*` file untouched for this long is a killed writer's leftover, not a write in progress.
STALE_TEMP_SECONDS = 60.0


class NoSpaceError(OSError):
    """The disk filled up while a file was written; nothing was left half-written."""


class ChecksumError(ValueError):
    """A file's bytes do not match the sha256 recorded beside it."""


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto `target` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    except OSError as exc:
        raise_if_full(exc, target)
        raise
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp makes the file owner-only; give it the permissions a plain open() would, so
    # workers running as another user can read what this one wrote.
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield tmp
        os.replace(tmp, target)
    except OSError as exc:
        raise_if_full(exc, target)
        raise
    finally:
        if tmp.exists():
            tmp.unlink()
    _remove_stale_temps(target, started)


@contextlib.contextmanager
def atomic_paths(*targets: str | os.PathLike) -> Iterator[list[Path]]:
    """Temporary paths for several files that belong together (a CSV and its errors file): each
    target is replaced only once every one of them has been written; a failure while writing
    replaces none (the caller names the file that failed: raise_if_full)."""
    started = time.time()
    with contextlib.ExitStack() as stack:
        temps = [stack.enter_context(_temp_beside(Path(target))) for target in targets]
        yield temps
        for done, (tmp, target) in enumerate(zip(temps, targets)):
            try:
                os.replace(tmp, target)
            except OSError as exc:
                if done:  # a rename in one folder hardly fails, but say truthfully what was replaced
                    replaced = ", ".join(str(t) for t in targets[:done])
                    raise OSError(exc.errno, f"{target}: not replaced ({exc.strerror}); {replaced} already "
                                             "was") from None
                raise_if_full(exc, Path(target))
                raise
    for target in targets:
        _remove_stale_temps(Path(target), started)


@contextlib.contextmanager
def _temp_beside(target: Path) -> Iterator[Path]:
    """A temporary file in `target`'s folder, removed on exit unless it was renamed."""
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    except OSError as exc:
        raise_if_full(exc, target)
        raise
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield tmp
    finally:
        if tmp.exists():
            tmp.unlink()


def raise_if_full(exc: OSError, target: Path) -> None:
    """A full disk (ENOSPC, or EDQUOT: the quota) as a NoSpaceError naming the file being written."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT) and not isinstance(exc, NoSpaceError):
        raise NoSpaceError(exc.errno, f"{target}: no space left on device while writing it (nothing was "
                                      "replaced; free some space and retry)") from None


def _remove_stale_temps(target: Path, started: float) -> None:
    """Remove `.target.tmp-*` files a killed writer left: older than this write and idle for a while."""
    for leftover in target.parent.glob(f".{target.name}.tmp-*"):
        try:
            modified = leftover.stat().st_mtime
            if modified < started and modified < time.time() - STALE_TEMP_SECONDS:
                leftover.unlink()
        except OSError:  # another writer removed it first, or it is not ours to remove
            continue


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(target: str | os.PathLike, text: str) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(text)
    return Path(target)


def write_json(target: str | os.PathLike, data: Any) -> Path:
    return write_text(target, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None


# -- sha256: the object-store manifest's entries and the digest beside a checkpoint ---------------
def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_entry(path: str | os.PathLike) -> dict[str, Any]:
    """{"sha256", "size"} of a file: an object-store manifest entry."""
    return {"sha256": sha256_of(path), "size": Path(path).stat().st_size}


def digest_path(path: str | os.PathLike) -> Path:
    """Where the sha256 of `path` is kept: `<path>.sha256`."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def write_digest(path: str | os.PathLike, sha256: str | None = None) -> Path:
    """Write `<path>.sha256` ("<hex>  <name>", as sha256sum prints it); `sha256` if already known."""
    path = Path(path)
    return write_text(digest_path(path), f"{sha256 or sha256_of(path)}  {path.name}\n")


def verify_digest(path: str | os.PathLike, found: str | None = None) -> bool:
    """Check `path` (or `found`, its sha256 if the caller already has its bytes) against
    `<path>.sha256`; False when there is none (written before digests were kept, or a save was killed
    between the rename and the digest), True when it matches; ChecksumError naming both files when
    it does not."""
    path = Path(path)
    recorded_path = digest_path(path)
    try:
        recorded = recorded_path.read_text().split()
    except FileNotFoundError:
        return False
    if not recorded or len(recorded[0]) != 64:
        raise ChecksumError(f"{recorded_path}: not a sha256 digest line ('<64 hex digits>  {path.name}')")
    found = found or sha256_of(path)
    if found != recorded[0].lower():
        raise ChecksumError(f"{path}: sha256 {found} does not match {recorded_path} ({recorded[0]}); the file "
                            "was corrupted or changed after it was written; retrain or restore it")
    return True

