"""Saving and loading checkpoints safely.

A `.pt` file is a pickle, and unpickling can run arbitrary code. Every load here uses
`torch.load(weights_only=True)`, whose restricted unpickler accepts only tensors, numbers,
strings, lists, tuples and dicts; anything else is refused with `UnsafeCheckpointError`.
`save_checkpoint` checks the same rule before writing, so what we save we can always load.

Beside every file it saves goes `<file>.sha256` (faceattr.fsutil's digest, the same sha256 the
object-store manifest records); `load_checkpoint` checks it before unpickling, so a corrupted or
edited file is refused instead of loading with changed weights. Files saved before digests were
kept have none and load as they are. A save removes the old digest before it renames the new file
into place and writes the new digest after: a reader in between, or a save killed in between, sees
no digest and the file loads unverified, never a valid file refused for a stale digest.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from faceattr.fsutil import atomic_path, digest_path, verify_digest, write_digest

# Plain values a checkpoint may hold besides tensors and containers.
_SCALARS = (bool, int, float, str, type(None))


class UnsafeCheckpointError(ValueError):
    """A checkpoint holds a pickled object that would run code when loaded; it was not loaded."""


def save_checkpoint(obj: dict, path: str | os.PathLike) -> Path:
    """Write `obj` with torch.save to a temporary name, then rename it onto `path`."""
    if not isinstance(obj, dict):
        raise TypeError(f"{path}: a checkpoint must be a dict, got {type(obj).__name__}")
    _check_plain(obj, "checkpoint")
    path = Path(path)
    # Serialised in memory, then written with plain file writes: torch.save's own writer reports a
    # full disk as "enforce fail ... unexpected pos", this one as "no space left on device" (OSError).
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getbuffer()
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        digest_path(path).unlink(missing_ok=True)  # the old digest must not outlive the old file
    write_digest(path, hashlib.sha256(data).hexdigest())
    return path


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Load a checkpoint dict with torch.load(weights_only=True).

    Raises FileNotFoundError if absent, ChecksumError if it does not match its `.sha256`,
    UnsafeCheckpointError if it carries a pickled object that would execute code, ValueError if
    it is not a readable checkpoint dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    data = path.read_bytes()  # read once: hashed, then unpickled from memory
    # ChecksumError (a ValueError) names the file and its digest
    verify_digest(path, hashlib.sha256(data).hexdigest())
    try:
        obj = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        message = str(exc)
        if "GLOBAL" in message:
            # The restricted unpickler met a global it does not allow (a function such as
            # os.system, or a class): loading it would have called that code.
            raise UnsafeCheckpointError(
                f"{path}: refused to load: it holds a pickled object that could run code "
                f"(only tensors, numbers, strings, lists and dicts are allowed; {_global_line(message)})"
            ) from None
        raise ValueError(f"{path}: not a readable PyTorch checkpoint (corrupt pickle data)") from None
    except Exception as exc:  # noqa: BLE001 - corrupt data fails in many ways (EOFError, IndexError, ...)
        reason = _first_line(str(exc)) or type(exc).__name__
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({reason})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict checkpoint, found {type(obj).__name__}")
    return obj


def _check_plain(value: Any, where: str) -> None:
    """Raise TypeError naming the key path of anything weights_only loading would refuse."""
    # Exact types: subclasses (numpy floats, namedtuples, enums) pickle as their class.
    if isinstance(value, (torch.Tensor, torch.dtype, torch.device, torch.Size)) or type(value) in _SCALARS:
        return
    if type(value) in (dict, OrderedDict):
        for key, item in value.items():
            if type(key) not in _SCALARS:
                raise TypeError(f"{where}: key {key!r} of type {type(key).__name__} cannot be saved")
            _check_plain(item, f"{where}[{key!r}]")
        return
    if type(value) in (list, tuple):
        for index, item in enumerate(value):
            _check_plain(item, f"{where}[{index}]")
        return
    raise TypeError(
        f"{where}: a {type(value).__module__}.{type(value).__name__} cannot go in a checkpoint; "
        "use tensors, numbers, strings, lists and dicts (e.g. config.to_dict())"
    )


def _global_line(message: str) -> str:
    """The part of torch's weights_only error that names the refused global."""
    for line in message.splitlines():
        if "GLOBAL" in line:
            line = line.strip().removeprefix("WeightsUnpickler error:").strip()
            return line.split(" was not an allowed global")[0].split(" whose module")[0]
    return "unsupported global"


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else ""
