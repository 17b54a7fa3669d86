"""Acquire CelebA into ROOT/celeba, torchvision's layout, from a local folder, an http(s) mirror or Google Drive.

    ROOT/celeba/img_align_celeba/NNNNNN.jpg
    ROOT/celeba/list_attr_celeba.txt, list_eval_partition.txt, identity_CelebA.txt
    ROOT/celeba/manifest.json      what was verified, with its data version; written last
    ROOT/celeba/versions/<id>/     every verified version, hard links (faceattr.data.versions)

Every file is fetched into a staging folder beside the data, verified, and only then renamed
into place; the images are extracted into the staging folder and the finished folder renamed.
The old manifest is removed before anything changes and the new one is written last, so an
interrupted run leaves nothing a later run would trust.

Verification: the full official files (the attribute file's count line says 202,599) must match
the official md5s. Any other source gets a manifest of counts and sha256s, checked on re-run.
A re-run trusts files whose size and mtime are unchanged, so it never re-hashes 1.4 GB.
New data (images added, removed or replaced, labels edited) becomes a new data version: the new
images are hashed, those unchanged since the previous version hard-linked to it, and the version's
folder is made before the manifest names it. The result says what changed.
Where the files come from (folder, mirror, Google Drive) is faceattr.data.sources.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import time
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from faceattr.fsutil import raise_if_full, read_json, write_json
from faceattr.progress import Progress
from faceattr.data.labels import OFFICIAL_COUNT, read_attributes, read_identity, read_partition
from faceattr.data.layout import ATTR_FILE, IDENTITY_FILE, IMAGES_DIR, IMAGES_ZIP, PARTITION_FILE, celeba_dir
from faceattr.data import sources, versions
from faceattr.data.sources import CHUNK, LOG_EVERY_S, WORKAROUND, DownloadError

log = logging.getLogger(__name__)

LABEL_FILES = (ATTR_FILE, PARTITION_FILE, IDENTITY_FILE)
OPTIONAL_FILES = frozenset({IDENTITY_FILE})
MANIFEST_FILE = versions.MANIFEST_FILE
MANIFEST_VERSION = 1

OFFICIAL_MD5 = {
    ATTR_FILE: "75e246fa4810816ffd6ee81facbd244c",
    PARTITION_FILE: "d32c9cbf5e040fd4025c592c306e6668",
    IDENTITY_FILE: "32bd1bd63d3c78cd57e08160ec5ed1e2",
    IMAGES_ZIP: "00d2c5bc6d35e252742224ab0c1e8fcb",
}
EXTRACT_THREADS = 8


def acquire(source: str, root: Path) -> dict[str, Any]:
    """Fetch, verify and extract CelebA from `source` into `root`/celeba.

    `source`: a folder holding the official files (img_align_celeba.zip or an extracted
    img_align_celeba/, list_attr_celeba.txt, list_eval_partition.txt, optional identity_CelebA.txt),
    an http(s) base URL serving them, or "gdrive". Returns status "downloaded" or "up-to-date",
    the counts, the paths, the data version, the previous one and what changed.
    """
    started = time.monotonic()
    source_id = sources.canonical(source)
    dest = celeba_dir(root)
    dest.mkdir(parents=True, exist_ok=True)
    with versions.locked(root):
        manifest = _trusted_manifest(dest, source_id)
        if manifest is not None:
            log.info("%s: verified data from %s is present; nothing to do", dest, source_id)
            return _result("up-to-date", dest, manifest, started)
        previous = versions.current_version(root)
        # From here on the old data is not trusted: drop its manifest first.
        (dest / MANIFEST_FILE).unlink(missing_ok=True)
        _remove_leftovers(dest)
        with _staging(dest) as staging:
            manifest = _fetch_and_verify(source_id, dest, staging, previous)
        log.info("%s: %d images ready, data version %s (%s)", dest, manifest["counts"]["images"],
                 manifest["data_version"], _elapsed(started))
        return _result("downloaded", dest, manifest, started)


# -- the work -----------------------------------------------------------------------------------
def _fetch_and_verify(source_id: str, dest: Path, staging: Path, previous: str | None) -> dict[str, Any]:
    local = Path(source_id) if sources.is_local(source_id) else None
    labels: dict[str, Path] = {}
    for name in LABEL_FILES:
        target = staging / name
        if sources.fetch(source_id, name, target):
            labels[name] = target
        elif name in OPTIONAL_FILES:
            log.warning("%s: no %s; the 'identity' split strategy will not be available", source_id, name)
        else:
            raise DownloadError(f"{sources.origin(source_id, name)}: not found; the source must provide {name}")

    hashes = {name: _hash_file(path, sources.origin(source_id, name)) for name, path in labels.items()}
    image_names, counts = _read_labels(source_id, labels)
    official = counts["attributes"] == OFFICIAL_COUNT
    if official:
        for name in labels:
            _check_md5(sources.origin(source_id, name), hashes[name]["md5"], OFFICIAL_MD5[name])

    in_place = local is not None and local == dest.resolve() and (dest / IMAGES_DIR).is_dir()
    archive, images = _stage_images(source_id, dest, staging, image_names, official, in_place)
    root = dest.parent
    old_folder = versions.version_dir(root, previous) if previous else None
    old_hashes = versions.read_image_hashes(old_folder) if old_folder else {}
    image_hashes = versions.hash_images(images if images is not None else dest / IMAGES_DIR)
    if images is not None and old_folder is not None:
        versions.link_unchanged(images, old_folder, image_hashes, old_hashes)

    # Install: label files, the downloaded zip, then swap in the images folder.
    for name in LABEL_FILES:
        if name in labels:
            os.replace(labels[name], dest / name)
        else:
            (dest / name).unlink(missing_ok=True)  # a stale file from other data
    if local is None:
        os.replace(staging / IMAGES_ZIP, dest / IMAGES_ZIP)
    if images is not None:
        old = dest / IMAGES_DIR
        if old.exists():
            os.replace(old, staging / "old-images")  # removed with the staging folder
        os.replace(images, dest / IMAGES_DIR)

    counts["images"] = _count_files(dest / IMAGES_DIR)
    files = {name: {**_stat(dest / name), **hashes[name]} for name in labels}
    label_sha256 = {name: hashes[name]["sha256"] for name in labels}
    version = versions.version_id(label_sha256, hashlib.sha256(versions.image_manifest(image_hashes).encode()).hexdigest())
    old_labels = read_json(old_folder / versions.VERSION_FILE).get("labels", {}) if old_folder else {}
    changed = versions.changes(image_hashes, old_hashes, label_sha256, old_labels)
    versions.snapshot(root, version, list(labels), image_hashes,
                      {"labels": label_sha256, "counts": counts, "source": source_id, "previous_version": previous,
                       "changes": changed})
    manifest = {
        "version": MANIFEST_VERSION,
        "source": source_id,
        "official": official,
        "counts": counts,
        "files": files,
        "archive": archive,
        # A local source is checked for changes on re-run (size and mtime: cheap).
        "source_stats": _source_stats(local) if local is not None and not in_place else {},
        "verified_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "data_version": version,
        "previous_version": previous,
        "changes": changed,
    }
    write_json(dest / MANIFEST_FILE, manifest)
    return manifest


def _stage_images(
    source_id: str, dest: Path, staging: Path, image_names: set[str], official: bool, in_place: bool
) -> tuple[dict[str, Any] | None, Path | None]:
    """Images into staging/img_align_celeba, from a zip (the source's own, or one downloaded into
    staging) or an extracted folder. Returns (the zip's size and hashes or None, the staged folder
    or None when the images are already in place)."""
    local = Path(source_id) if sources.is_local(source_id) else None
    if in_place:
        # An existing torchvision folder used as its own source: the images are already there.
        _check_folder(dest / IMAGES_DIR, image_names)
        return None, None
    if local is not None and not (local / IMAGES_ZIP).is_file():
        return None, _copy_folder(local / IMAGES_DIR, image_names, staging)
    zip_path = local / IMAGES_ZIP if local is not None else staging / IMAGES_ZIP
    zip_origin = sources.origin(source_id, IMAGES_ZIP)
    if local is None and not sources.fetch(source_id, IMAGES_ZIP, zip_path):
        raise DownloadError(f"{zip_origin}: not found; the source must provide {IMAGES_ZIP}")
    archive = {"size": zip_path.stat().st_size, **_hash_file(zip_path, zip_origin, progress=True)}
    if official:
        _check_md5(zip_origin, archive["md5"], OFFICIAL_MD5[IMAGES_ZIP])
    return archive, _extract(zip_path, zip_origin, image_names, staging)


def _read_labels(source_id: str, labels: dict[str, Path]) -> tuple[set[str], dict[str, Any]]:
    """Parse the label files; check the partition and identity files list the same images."""
    with _errors_named(labels, source_id):
        attributes = read_attributes(labels[ATTR_FILE])
        others = {PARTITION_FILE: read_partition(labels[PARTITION_FILE])}
        if IDENTITY_FILE in labels:
            others[IDENTITY_FILE] = read_identity(labels[IDENTITY_FILE])
    names = set(attributes.index)
    for name, series in others.items():
        listed = set(series.index)
        if listed != names:
            unlisted, extra = sorted(names - listed), sorted(listed - names)
            raise DownloadError(
                f"{sources.origin(source_id, name)}: does not list the same images as {ATTR_FILE}: "
                f"{len(unlisted)} missing {_first(unlisted)}, {len(extra)} extra {_first(extra)}"
            )
    counts = {
        "attributes": len(attributes),
        "partition": len(others[PARTITION_FILE]),
        "identity": len(others[IDENTITY_FILE]) if IDENTITY_FILE in others else None,
    }
    return names, counts


def _extract(zip_path: Path, origin: str, image_names: set[str], staging: Path) -> Path:
    """Stream the images under img_align_celeba/ into staging/img_align_celeba; return that folder.

    Creating 200k small files is the slow part, and it waits on the file system rather than the
    CPU, so a few threads write entries side by side (zipfile allows concurrent readers).
    """
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        hint = " It is an HTML page: " + WORKAROUND if sources.is_html(zip_path) else " Delete it and download again."
        raise DownloadError(f"{origin}: not a valid zip archive ({exc}).{hint}") from None
    out = staging / IMAGES_DIR
    out.mkdir()

    def write(item: tuple[str, zipfile.ZipInfo]) -> int:
        name, info = item
        try:
            with archive.open(info) as src, open(out / name, "wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
            if isinstance(exc, OSError):
                raise_if_full(exc, out / name)  # a full disk is not a corrupt zip
            raise DownloadError(f"{origin}: corrupt zip: entry {info.filename!r}: {exc}") from None
        return info.file_size

    with archive:
        members = _image_members(archive, origin)
        _check_missing(origin, image_names, members.keys())
        total = sum(info.file_size for info in members.values())
        with Progress(total, f"extract {zip_path.name}", unit="B", log_every_s=LOG_EVERY_S) as progress, \
                ThreadPoolExecutor(EXTRACT_THREADS) as pool:
            for size in pool.map(write, members.items()):  # an error cancels the entries not started
                progress.update(size)
    return out


def _image_members(archive: zipfile.ZipFile, origin: str) -> dict[str, zipfile.ZipInfo]:
    """Image file name -> entry, for files directly under img_align_celeba/; refuse unsafe names."""
    members: dict[str, zipfile.ZipInfo] = {}
    skipped = 0
    for info in archive.infolist():
        name = info.filename
        parts = name.replace("\\", "/").split("/")
        if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts:
            raise DownloadError(
                f"{origin}: refusing entry {name!r}: absolute paths and '..' would write outside the dataset folder"
            )
        if info.is_dir():
            continue
        if len(parts) == 2 and parts[0] == IMAGES_DIR and parts[1]:
            members[parts[1]] = info
        else:
            skipped += 1
    if skipped:
        log.info("%s: ignored %d entries outside %s/", origin, skipped, IMAGES_DIR)
    if not members:
        raise DownloadError(f"{origin}: no images under {IMAGES_DIR}/ (the official layout is {IMAGES_DIR}/NNNNNN.jpg)")
    return members


def _copy_folder(folder: Path, image_names: set[str], staging: Path) -> Path:
    """Copy an already extracted img_align_celeba/ into staging."""
    if not folder.is_dir():
        raise DownloadError(f"{folder.parent}: holds neither {IMAGES_ZIP} nor an extracted {IMAGES_DIR}/")
    present = sorted(entry.name for entry in os.scandir(folder) if entry.is_file())
    _check_missing(str(folder), image_names, present)
    out = staging / IMAGES_DIR
    out.mkdir()
    with Progress(len(present), f"copy {folder}", unit="files", log_every_s=LOG_EVERY_S) as progress:
        for name in present:
            sources.copy_file(folder / name, out / name)
            progress.update(1)
    return out


def _check_folder(folder: Path, image_names: set[str]) -> None:
    _check_missing(str(folder), image_names, [entry.name for entry in os.scandir(folder) if entry.is_file()])


def _check_missing(origin: str, image_names: set[str], present) -> None:
    missing = sorted(image_names - set(present))
    if missing:
        raise DownloadError(
            f"{origin}: {len(missing)} image(s) listed in {ATTR_FILE} are not in it, {_first(missing)}"
        )


# -- verification -------------------------------------------------------------------------------
def _trusted_manifest(dest: Path, source_id: str) -> dict[str, Any] | None:
    """The manifest when the data it describes is still there, unchanged, from the same source; else None."""
    path = dest / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        manifest = read_json(path)
        reason = _untrusted_reason(dest, source_id, manifest)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        reason = f"unreadable manifest ({exc})"
    if reason:
        log.info("%s: %s; fetching again", dest, reason)
        return None
    return manifest


def _untrusted_reason(dest: Path, source_id: str, manifest: dict[str, Any]) -> str | None:
    if manifest["version"] != MANIFEST_VERSION:
        return f"manifest version {manifest['version']!r} is not {MANIFEST_VERSION}"
    if manifest["source"] != source_id:
        return f"the data came from {manifest['source']}, not {source_id}"
    for name, recorded in manifest["files"].items():
        path = dest / name
        if not path.is_file():
            return f"{name} is missing"
        if _stat(path) != {"size": recorded["size"], "mtime_ns": recorded["mtime_ns"]}:
            # Touched or copied: trust it only if the contents are the same.
            if _hash_file(path, str(path))["sha256"] != recorded["sha256"]:
                return f"{name} changed"
    images = dest / IMAGES_DIR
    if not images.is_dir() or _count_files(images) != manifest["counts"]["images"]:
        return f"{IMAGES_DIR}/ does not hold the {manifest['counts']['images']} images verified"
    if manifest["source_stats"] and _source_stats(Path(source_id)) != manifest["source_stats"]:
        return f"the files in {source_id} changed"
    return None


def _check_md5(origin: str, actual: str, expected: str) -> None:
    if actual != expected:
        raise DownloadError(
            f"{origin}: checksum mismatch: md5 expected {expected} (the official file), got {actual}; "
            "the file is damaged or not the official one, delete it and download again"
        )


def _hash_file(path: Path, origin: str, progress: bool = False) -> dict[str, str]:
    md5, sha256 = hashlib.md5(), hashlib.sha256()
    total = path.stat().st_size
    with open(path, "rb") as src, \
            Progress(total, f"verify {origin}", unit="B", log_every_s=LOG_EVERY_S, enabled=progress) as bar:
        while chunk := src.read(CHUNK):
            md5.update(chunk)
            sha256.update(chunk)
            bar.update(len(chunk))
    return {"md5": md5.hexdigest(), "sha256": sha256.hexdigest()}


def _stat(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _source_stats(folder: Path) -> dict[str, dict[str, int]]:
    names = (*LABEL_FILES, IMAGES_ZIP)
    stats = {name: _stat(folder / name) for name in names if (folder / name).is_file()}
    if not (folder / IMAGES_ZIP).is_file() and (folder / IMAGES_DIR).is_dir():
        stats[IMAGES_DIR] = {"files": _count_files(folder / IMAGES_DIR)}
    return stats


def _count_files(folder: Path) -> int:
    with os.scandir(folder) as entries:
        return sum(1 for entry in entries if entry.is_file())


@contextlib.contextmanager
def _errors_named(labels: dict[str, Path], source_id: str) -> Iterator[None]:
    """Label errors name the source file, not its staging copy."""
    try:
        yield
    except ValueError as exc:
        message = str(exc)
        for name, path in labels.items():
            message = message.replace(str(path), sources.origin(source_id, name))
        raise DownloadError(message) from None


# -- housekeeping -------------------------------------------------------------------------------
@contextlib.contextmanager
def _staging(dest: Path) -> Iterator[Path]:
    """A temporary folder beside the data (same file system, so renames are atomic)."""
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=dest))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _remove_leftovers(dest: Path) -> None:
    """Staging folders of an interrupted run (we hold the lock, so no run is using them)."""
    for path in dest.glob(".staging-*"):
        log.info("%s: removing the leftovers of an interrupted run", path)
        shutil.rmtree(path, ignore_errors=True)


def _result(status: str, dest: Path, manifest: dict[str, Any], started: float) -> dict[str, Any]:
    paths = {name: str(dest / name) for name in manifest["files"]}
    paths[IMAGES_DIR] = str(dest / IMAGES_DIR)
    paths[MANIFEST_FILE] = str(dest / MANIFEST_FILE)
    return {
        "status": status,
        "source": manifest["source"],
        "root": str(dest.parent),
        "official": manifest["official"],
        "counts": manifest["counts"],
        "version": manifest.get("data_version"),
        "previous_version": manifest.get("previous_version"),
        "changes": manifest.get("changes"),
        "paths": paths,
        "seconds": round(time.monotonic() - started, 3),
    }


def _first(names: list[str], k: int = 5) -> str:
    if not names:
        return ""
    more = ", ..." if len(names) > k else ""
    return "(first: " + ", ".join(names[:k]) + more + ")"


def _elapsed(started: float) -> str:
    return f"{time.monotonic() - started:.1f} s"
