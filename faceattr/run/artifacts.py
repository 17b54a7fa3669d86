"""Run folders shared through an object store, for workers that do not share a disk.

With FACEATTR_ARTIFACTS=s3://bucket/prefix (any fsspec URL; s3:// goes through s3fs, whose
endpoint and credentials come from the usual AWS_* variables, AWS_ENDPOINT_URL included), each
Airflow task pulls its run folder before it works and pushes what it wrote afterwards. Without
it, run folders are plain local (or shared) paths and push/pull do nothing.

Remote layout, for the run folder RUN (its name, the sanitised Airflow run id):
    <url>/RUN/files/<relative path>            the file's bytes
    <url>/RUN/manifest/<relative path>.json    {"sha256", "size"}: written after the bytes

A reader trusts only files that have a manifest entry and checks the bytes it got against the
entry's sha256, so it never uses a half-uploaded file. Each file has its own entry (no shared
index to rewrite), so tasks of one run that overlap (validate K while train K+1 runs) can push
at the same time. The bytes go to a temporary key first and are then moved into place, for
stores where a plain write is not atomic. Downloads land under a temporary name and are renamed,
like every other write in faceattr.
"""
from __future__ import annotations

import json
import logging
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable

from faceattr import settings
from faceattr.fsutil import atomic_path, file_entry, sha256_of  # one sha256 mechanism: checkpoints too
from faceattr.run.layout import RunLayout

log = logging.getLogger(__name__)

ENV = settings.ARTIFACTS
FILES, MANIFEST, TEMP = "files", "manifest", "tmp"
LOCAL_ONLY = {RunLayout("").cache.name}  # decoded-image cache: rebuilt per worker, never shipped


class ArtifactError(RuntimeError):
    """The artifact store is unreachable or holds something inconsistent; the message names the key."""


def artifacts_url() -> str | None:
    """$FACEATTR_ARTIFACTS, or None when run folders are local paths."""
    return settings.artifacts()


def _filesystem(url: str, storage_options: dict[str, Any] | None):
    import fsspec  # only with FACEATTR_ARTIFACTS set: every task imports this module, and fsspec is the s3 extra

    if "://" not in url:
        raise ArtifactError(f"{ENV}: {url!r} is not a URL such as s3://bucket/prefix")
    with warnings.catch_warnings():
        # fsspec warns about old s3fs releases at import; the calls used here work with them.
        warnings.simplefilter("ignore", UserWarning)
        fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    return fs, root.rstrip("/")


def local_files(run_dir: Path) -> list[str]:
    """Relative POSIX paths of the run folder's files, skipping temporary files and local-only folders."""
    found = []
    for path in sorted(run_dir.rglob("*")):
        relative = path.relative_to(run_dir)
        if not path.is_file() or relative.parts[0] in LOCAL_ONLY:
            continue
        if any(part.startswith(".") for part in relative.parts):  # .name.tmp-*: a write in progress
            continue
        found.append(relative.as_posix())
    return found


def _remote_manifest(fs, base: str) -> dict[str, dict]:
    """{relative path: {"sha256", "size"}} of everything pushed for this run."""
    prefix = f"{base}/{MANIFEST}/"
    fs.invalidate_cache(base)  # other workers write here: never trust a cached listing
    try:
        keys = [key for key in fs.find(prefix) if key.endswith(".json")]
    except FileNotFoundError:
        return {}
    entries = {}
    for key, raw in (fs.cat(keys) if keys else {}).items():
        relative = key[len(prefix):-len(".json")]
        try:
            entry = json.loads(raw)
            entries[relative] = {"sha256": str(entry["sha256"]), "size": int(entry["size"])}
        except (ValueError, KeyError, TypeError) as exc:
            raise ArtifactError(f"{key}: not a manifest entry ({exc}); push the run again") from None
    return entries


def push(run_dir: str | Path, url: str | None = None, *, storage_options: dict[str, Any] | None = None) -> dict:
    """Upload the run folder's new or changed files; returns {"url", "uploaded", "unchanged", "bytes"}.

    `url` defaults to $FACEATTR_ARTIFACTS; with neither, nothing happens ({"url": None}).
    """
    url = url or artifacts_url()
    run_dir = Path(run_dir)
    if url is None:
        return {"url": None, "uploaded": 0, "unchanged": 0, "bytes": 0}
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no run folder to push")
    fs, root = _filesystem(url, storage_options)
    base = f"{root}/{run_dir.name}"
    remote = _remote_manifest(fs, base)
    uploaded, unchanged, sent = [], 0, 0
    for relative in local_files(run_dir):
        path = run_dir / relative
        entry = file_entry(path)
        if remote.get(relative) == entry:
            unchanged += 1
            continue
        temp = f"{base}/{TEMP}/{uuid.uuid4().hex}"
        fs.put_file(str(path), temp)
        fs.mv(temp, f"{base}/{FILES}/{relative}")
        # The entry goes last: from now on readers may take this file.
        fs.pipe_file(f"{base}/{MANIFEST}/{relative}.json", json.dumps(entry).encode())
        uploaded.append(relative)
        sent += entry["size"]
    if uploaded:
        log.info("artifacts: pushed %d file(s), %d bytes, to %s/%s (%s)", len(uploaded), sent, url, run_dir.name,
                 ", ".join(uploaded))
    return {"url": f"{url}/{run_dir.name}", "uploaded": len(uploaded), "unchanged": unchanged, "bytes": sent}


def pull(run_dir: str | Path, url: str | None = None, *, storage_options: dict[str, Any] | None = None,
         only: Callable[[str], bool] | None = None) -> dict:
    """Download the run's pushed files that are missing or different here; returns {"url", "downloaded", "unchanged"}.

    Every download is checked against its manifest sha256 before it is renamed into place. `only`
    (a test on the path inside the run folder) limits the pull, e.g. to what a page shows.
    """
    url = url or artifacts_url()
    run_dir = Path(run_dir)
    if url is None:
        return {"url": None, "downloaded": 0, "unchanged": 0}
    fs, root = _filesystem(url, storage_options)
    base = f"{root}/{run_dir.name}"
    remote = _remote_manifest(fs, base)
    downloaded, unchanged = [], 0
    for relative, entry in sorted(remote.items()):
        if only is not None and not only(relative):
            continue
        target = _target(run_dir, relative, f"{base}/{MANIFEST}/{relative}.json")
        if target.is_file() and target.stat().st_size == entry["size"] and sha256_of(target) == entry["sha256"]:
            unchanged += 1
            continue
        _download(fs, base, relative, entry, target)
        downloaded.append(relative)
    if downloaded:
        log.info("artifacts: pulled %d file(s) from %s/%s (%s)", len(downloaded), url, run_dir.name,
                 ", ".join(downloaded))
    return {"url": f"{url}/{run_dir.name}", "downloaded": len(downloaded), "unchanged": unchanged}


def _target(run_dir: Path, relative: str, key: str) -> Path:
    """run_dir / relative, refusing a manifest key that would write outside the run folder.

    The keys come from the bucket, which the UI's API server pulls from on a page view: a key with
    `..`, an absolute path, or a symlinked subfolder pointing elsewhere must never pick where we write.
    """
    parts = Path(relative).parts
    if not relative or Path(relative).is_absolute() or ".." in parts:
        raise ArtifactError(f"{key}: {relative!r} is not a path inside the run folder; refusing to pull it")
    target = run_dir / relative
    if not target.resolve().is_relative_to(run_dir.resolve()):
        raise ArtifactError(f"{key}: {relative!r} leads outside the run folder {run_dir}; refusing to pull it")
    return target


def _download(fs, base: str, relative: str, entry: dict, target: Path, attempts: int = 2) -> None:
    """Fetch one file into `target` atomically; re-read its entry once if it changed while we read."""
    key = f"{base}/{FILES}/{relative}"
    for attempt in range(attempts):
        try:
            with atomic_path(target) as tmp:
                try:
                    fs.get_file(key, str(tmp))
                except FileNotFoundError:
                    raise ArtifactError(f"{key}: listed in the manifest but missing from the store") from None
                got = sha256_of(tmp)
                if got != entry["sha256"]:
                    # Raising leaves `target` untouched: atomic_path renames only on success.
                    raise _Mismatch(got)
            return
        except _Mismatch as mismatch:
            if attempt + 1 == attempts:
                raise ArtifactError(
                    f"{key}: sha256 {mismatch} does not match its manifest entry {entry['sha256']}; "
                    "the file is being replaced, or the upload is corrupt"
                ) from None
            entry = json.loads(fs.cat_file(f"{base}/{MANIFEST}/{relative}.json"))


class _Mismatch(Exception):
    """A downloaded file's sha256 differs from its manifest entry (carries the sha256 found)."""
