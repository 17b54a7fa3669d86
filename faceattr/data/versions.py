"""Data versions: every dataset `download` verified stays readable for the runs split from it.

    ROOT/celeba/                        the current data, torchvision's layout (as before versions)
    ROOT/celeba/manifest.json           what download verified, with "data_version": <id>
    ROOT/celeba/versions/<id>/          one verified dataset: img_align_celeba/, the label files,
                                        images.sha256 (sha256sum's format) and version.json
    RUN/data_version.json               the version the run was split from (written by split)

A version's id is the first 16 hex digits of the sha256 of its label files' sha256s and its image
manifest's digest, so the same data is the same version. A version folder is made of hard links:
an image unchanged since the previous version shares its bytes with it, and so does the current
folder, so a version costs one directory entry per image plus the bytes of what changed. Download
never writes into an existing file (it renames new files into place), so a version folder never
changes after it is made.

A run reads its labels and images through `run_dataset_dir`: its recorded version, never the data
a later download brought. Runs split before versions existed (no RUN/data_version.json) read
ROOT/celeba as before. `prune` removes the versions no run uses, listing them; never the current one.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from faceattr.data.layout import ATTR_FILE, IMAGES_DIR, celeba_dir
from faceattr.fsutil import read_json, sha256_of, write_json
from faceattr.run.layout import RunLayout

VERSIONS_DIR = "versions"
IMAGE_MANIFEST = "images.sha256"
VERSION_FILE = "version.json"
LOCK_FILE = ".download.lock"
MANIFEST_FILE = "manifest.json"


def versions_dir(root: str | Path) -> Path:
    return celeba_dir(root) / VERSIONS_DIR


def version_dir(root: str | Path, version: str) -> Path:
    return versions_dir(root) / version


def version_id(label_sha256: dict[str, str], images_sha256: str) -> str:
    """The id of the data: label files' sha256s and the image manifest's digest."""
    text = json.dumps({"labels": label_sha256, "images": images_sha256}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def image_manifest(hashes: dict[str, str]) -> str:
    """images.sha256's text: "<sha256>  img_align_celeba/<name>" per image, sorted (sha256sum -c reads it)."""
    return "".join(f"{hashes[name]}  {IMAGES_DIR}/{name}\n" for name in sorted(hashes))


def read_image_hashes(folder: Path) -> dict[str, str]:
    """name -> sha256 from a version folder's images.sha256 ({} when absent)."""
    path = folder / IMAGE_MANIFEST
    if not path.is_file():
        return {}
    found = {}
    for line in path.read_text().splitlines():
        digest, _, name = line.partition("  ")
        found[name.removeprefix(f"{IMAGES_DIR}/")] = digest
    return found


def hash_images(folder: Path) -> dict[str, str]:
    with os.scandir(folder) as entries:
        return {entry.name: sha256_of(entry.path) for entry in entries if entry.is_file()}


def current_version(root: str | Path) -> str | None:
    """The version ROOT/celeba holds now (manifest.json's data_version, when its folder exists)."""
    manifest = celeba_dir(root) / MANIFEST_FILE
    try:
        version = read_json(manifest).get("data_version")
    except (OSError, ValueError, AttributeError):
        return None
    return version if version and version_dir(root, version).is_dir() else None


def snapshot(root: str | Path, version: str, files: Iterable[str], hashes: dict[str, str], info: dict) -> Path:
    """Make ROOT/celeba/versions/<version>/ from the current folder's files, as hard links, atomically
    (built under a temporary name, then renamed). An existing version is the same data: kept."""
    current, target = celeba_dir(root), version_dir(root, version)
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.tmp-", dir=target.parent))
    try:
        for name in files:
            os.link(current / name, staging / name)
        (staging / IMAGES_DIR).mkdir()
        for name in hashes:
            os.link(current / IMAGES_DIR / name, staging / IMAGES_DIR / name)
        (staging / IMAGE_MANIFEST).write_text(image_manifest(hashes))
        write_json(staging / VERSION_FILE, {"version": version, **info})
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def link_unchanged(staged: Path, previous: Path, staged_hashes: dict[str, str], previous_hashes: dict[str, str]) -> int:
    """Replace each staged image whose bytes the previous version holds by a hard link to that file,
    so versions share what did not change. Returns how many were linked."""
    linked = 0
    for name, digest in staged_hashes.items():
        if previous_hashes.get(name) == digest and (previous / IMAGES_DIR / name).is_file():
            tmp = staged / f".{name}.link"
            os.link(previous / IMAGES_DIR / name, tmp)
            os.replace(tmp, staged / name)
            linked += 1
    return linked


def changes(new_hashes: dict[str, str], old_hashes: dict[str, str], new_labels: dict[str, str],
            old_labels: dict[str, str]) -> dict:
    """What changed from one version to the next: image counts and the label files edited."""
    common = new_hashes.keys() & old_hashes.keys()
    return {
        "images_added": len(new_hashes.keys() - old_hashes.keys()),
        "images_removed": len(old_hashes.keys() - new_hashes.keys()),
        "images_replaced": sum(1 for name in common if new_hashes[name] != old_hashes[name]),
        "labels_changed": sorted(name for name in new_labels.keys() | old_labels.keys()
                                 if new_labels.get(name) != old_labels.get(name)),
    }


# -- runs ---------------------------------------------------------------------------------------
def record_run_version(run_dir: str | Path, root: str | Path, version: str | None) -> Path | None:
    """Write RUN/data_version.json at split time (nothing for data without a version)."""
    if version is None:
        return None
    return write_json(RunLayout(run_dir).data_version, {"version": version, "root": str(Path(root).resolve())})


def run_version(run_dir: str | Path) -> str | None:
    """The data version recorded in RUN/data_version.json, or None (a run split before versions)."""
    path = RunLayout(run_dir).data_version
    if not path.is_file():
        return None
    data = read_json(path)
    version = data.get("version") if isinstance(data, dict) else None
    if not isinstance(version, str) or not version:
        raise ValueError(f"{path}: field 'version': expected the id of a data version, got {version!r}")
    return version


def run_dataset_dir(run_dir: str | Path, root: str | Path) -> Path:
    """The folder a run reads labels and images from: its data version, else ROOT/celeba."""
    version = run_version(run_dir)
    if version is None:
        return celeba_dir(root)
    folder = version_dir(root, version)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: data version {version} of run {Path(run_dir).name} (its "
                                f"{RunLayout(run_dir).data_version.name}) is not there; was it pruned, or is the "
                                "root another one?")
    return folder


def run_labels_file(run_dir: str | Path, root: str | Path) -> Path:
    return run_dataset_dir(run_dir, root) / ATTR_FILE


# -- housekeeping -------------------------------------------------------------------------------
def all_versions(root: str | Path) -> list[str]:
    folder = versions_dir(root)
    if not folder.is_dir():
        return []
    return sorted(path.name for path in folder.iterdir() if path.is_dir() and not path.name.startswith("."))


def prune(root: str | Path, used: Iterable[str], *, apply: bool) -> dict:
    """The versions no run uses and that are not current: listed, and removed only with `apply`."""
    with locked(root):
        keep = set(used) | {current_version(root)}
        unused = [version for version in all_versions(root) if version not in keep]
        if apply:
            for version in unused:
                shutil.rmtree(version_dir(root, version))
    return {"root": str(root), "current": current_version(root), "kept": sorted(v for v in keep if v),
            "unused": unused, "removed": unused if apply else []}


@contextlib.contextmanager
def locked(root: str | Path, shared: bool = False) -> Iterator[None]:
    """The dataset folder's lock: download and prune hold it alone, split shares it to read a version."""
    folder = celeba_dir(root)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = open(folder / LOCK_FILE, "a")
    except OSError:
        if not shared:
            raise
        yield  # a read-only dataset: nothing can download into it either
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
