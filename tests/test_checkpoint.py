"""faceattr.checkpoint: atomic saves, weights_only loads, and refusal of code-carrying pickles."""
from __future__ import annotations

import os
import shlex

import pytest
import torch

from faceattr.checkpoint import UnsafeCheckpointError, load_checkpoint, save_checkpoint
from faceattr.fsutil import ChecksumError, NoSpaceError, digest_path, sha256_of


class _WritesMarker:
    """Unpickling this runs a shell command that creates a marker file: a stand-in for malware."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def _training_like_checkpoint() -> dict:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adamax(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": None,
        "rng": {"torch": torch.get_rng_state(), "cuda": None},
        "epoch": 3,
        "config": {"arch": "resnet18", "lr": 0.001, "compile": None, "tune_thresholds": False},
        "train": {"loss": 0.5, "accuracy": 0.9, "images": 10, "seconds": 1.5, "images_per_second": 6.7},
    }


def test_round_trip_keeps_tensors_and_plain_values(tmp_path):
    original = _training_like_checkpoint()
    path = save_checkpoint(original, tmp_path / "checkpoints" / "epoch_3.pt")
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 3 and loaded["config"] == original["config"] and loaded["train"] == original["train"]
    for key, tensor in original["model"].items():
        assert torch.equal(loaded["model"][key], tensor)
    assert torch.equal(loaded["rng"]["torch"], original["rng"]["torch"])
    assert loaded["optimizer"]["param_groups"][0]["lr"] == 1e-3
    # Nothing but the checkpoint and its digest is left in the folder: no temporary files.
    assert sorted(p.name for p in path.parent.iterdir()) == ["epoch_3.pt", "epoch_3.pt.sha256"]


def test_code_carrying_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": _WritesMarker(marker)}, path)

    with pytest.raises(UnsafeCheckpointError, match="evil.pt.*could run code") as caught:
        load_checkpoint(path)
    assert "system" in str(caught.value)  # names what it refused
    assert not marker.exists()

    # Control: the file really is malicious; plain unpickling of its data.pkl runs the payload.
    import pickle
    import zipfile

    with zipfile.ZipFile(path) as archive:
        data = next(name for name in archive.namelist() if name.endswith("data.pkl"))

        class _Unpickler(pickle.Unpickler):  # tensors are stored beside data.pkl; none here
            def persistent_load(self, pid):
                return None

        _Unpickler(archive.open(data)).load()
    assert marker.exists()


def test_unsafe_error_is_a_value_error(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"x": _WritesMarker(tmp_path / "m")}, path)
    with pytest.raises(ValueError):
        load_checkpoint(path)
    assert not (tmp_path / "m").exists()


def test_missing_corrupt_truncated_and_non_dict_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        load_checkpoint(tmp_path / "absent.pt")

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(ValueError, match="garbage.pt: not a readable") as caught:
        load_checkpoint(garbage)
    assert not isinstance(caught.value, UnsafeCheckpointError)

    good = save_checkpoint({"w": torch.ones(100)}, tmp_path / "good.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated.pt: not a readable"):
        load_checkpoint(truncated)

    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.pt"):
        load_checkpoint(empty)

    tensor_only = tmp_path / "tensor.pt"
    torch.save(torch.ones(2), tensor_only)
    with pytest.raises(ValueError, match="expected a dict"):
        load_checkpoint(tensor_only)


def test_save_refuses_what_a_safe_load_could_not_read(tmp_path):
    import numpy as np

    target = tmp_path / "bad.pt"
    with pytest.raises(TypeError, match=r"checkpoint\['train'\]\['loss'\].*numpy.float64"):
        save_checkpoint({"train": {"loss": np.float64(0.5)}}, target)
    with pytest.raises(TypeError, match=r"checkpoint\['obj'\]"):
        save_checkpoint({"obj": object()}, target)
    with pytest.raises(TypeError, match="must be a dict"):
        save_checkpoint([torch.ones(1)], target)
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temporary file


def test_save_replaces_atomically(tmp_path):
    target = tmp_path / "epoch_1.pt"
    save_checkpoint({"v": torch.zeros(2)}, target)
    save_checkpoint({"v": torch.ones(2)}, target)
    assert torch.equal(load_checkpoint(target)["v"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_1.pt", "epoch_1.pt.sha256"]


def test_a_save_killed_between_the_file_and_its_digest_still_loads(tmp_path, monkeypatch):
    """The new file is renamed into place before its digest is written; a save killed in between
    must not leave the old digest beside the new file (a valid checkpoint refused forever)."""
    import faceattr.checkpoint as checkpoint

    target = tmp_path / "epoch_1.pt"
    save_checkpoint({"v": torch.zeros(2)}, target)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "write_digest", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"v": torch.ones(2)}, target)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(target)["v"], torch.ones(2))  # unverified, but not refused
    save_checkpoint({"v": torch.ones(2)}, target)
    assert digest_path(target).read_text() == f"{sha256_of(target)}  epoch_1.pt\n"


def test_flipped_bytes_are_refused_by_the_digest(tmp_path):
    path = save_checkpoint({"weights": torch.ones(100_000)}, tmp_path / "model.pt")
    assert digest_path(path).read_text() == f"{sha256_of(path)}  model.pt\n"  # sha256sum -c reads it too
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(64)  # inside the tensor's bytes: still a loadable file
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=r"model.pt: sha256 [0-9a-f]{64} does not match .*model.pt.sha256"):
        load_checkpoint(path)
    # Without its digest (a file saved before digests were kept) it loads, changed: what the digest prevents.
    digest_path(path).unlink()
    assert not torch.equal(load_checkpoint(path)["weights"], torch.ones(100_000))


def test_a_full_disk_is_named_not_a_torch_internal_error(tmp_path, monkeypatch):
    """torch.save's own writer turns ENOSPC into 'enforce fail ... unexpected pos'; the checkpoint
    is written with plain file writes, so a full disk (here /dev/full's) says so and names the file."""
    import builtins

    real_open = builtins.open

    def full_disk(file, mode="r", *args, **kwargs):
        if "w" in mode and str(file).startswith(str(tmp_path)):
            return real_open("/dev/full", mode, *args, **kwargs)
        return real_open(file, mode, *args, **kwargs)

    path = tmp_path / "checkpoints" / "epoch_1.pt"
    monkeypatch.setattr(builtins, "open", full_disk)
    with pytest.raises(NoSpaceError, match=r"epoch_1.pt: no space left on device"):
        save_checkpoint(_training_like_checkpoint(), path)
    monkeypatch.undo()
    assert list(path.parent.iterdir()) == []  # nothing half-written

