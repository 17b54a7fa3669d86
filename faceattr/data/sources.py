"""Where CelebA's files come from: a local folder, an http(s) mirror or Google Drive (via gdown).

A source is named once in a canonical form (`canonical`); `fetch` copies or downloads one
official file from it, and `origin` says where a file came from, so every message names the
source's file rather than its staging copy. What happens to the files next (verification,
extraction, the manifest) is faceattr.data.download's job.
"""
from __future__ import annotations

import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path

from faceattr.fsutil import raise_if_full
from faceattr.progress import Progress
from faceattr.data.labels import looks_like_html
from faceattr.data.layout import ATTR_FILE, IDENTITY_FILE, IMAGES_ZIP, PARTITION_FILE

# The ids torchvision's datasets/celeba.py downloads from.
GDRIVE_IDS = {
    IMAGES_ZIP: "0B7EVK8r0v71pZjFTYXZWM3FlRnM",
    ATTR_FILE: "0B7EVK8r0v71pblRyaVFSWGxPY0U",
    IDENTITY_FILE: "1_ee_0u7vcNLOfNLegJRHmolfH5ICW-XS",
    PARTITION_FILE: "0B7EVK8r0v71pY0NSMzRuSXJEVkk",
}
CELEBA_PAGE = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"
WORKAROUND = (
    f"download the files by hand (from {CELEBA_PAGE}) into a folder and run "
    "'faceattr download --source FOLDER --root ROOT', or use a mirror: '--source https://MIRROR/'"
)

CHUNK = 4 << 20
HTTP_TIMEOUT_S = 60
LOG_EVERY_S = 15.0  # progress line interval when stderr is not a terminal


class DownloadError(ValueError):
    """The source is unusable or the data failed verification; the message names the file."""


def canonical(source: str) -> str:
    """The source in a canonical form: 'gdrive', a URL without a trailing slash, or an absolute folder."""
    if source == "gdrive":
        return source
    if source.startswith(("http://", "https://")):
        return source.rstrip("/")
    folder = Path(source).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{source}: no such folder; give a folder, an http(s) URL or 'gdrive'")
    folder = folder.resolve()
    if not (folder / ATTR_FILE).exists() and (folder / "celeba" / ATTR_FILE).exists():
        folder = folder / "celeba"  # a torchvision ROOT rather than ROOT/celeba
    return str(folder)


def is_local(source_id: str) -> bool:
    return source_id != "gdrive" and not source_id.startswith(("http://", "https://"))


def origin(source_id: str, name: str) -> str:
    """Where `name` comes from, for messages."""
    if source_id == "gdrive":
        return f"Google Drive file {GDRIVE_IDS[name]} ({name})"
    if is_local(source_id):
        return str(Path(source_id) / name)
    return f"{source_id}/{name}"


def fetch(source_id: str, name: str, target: Path) -> bool:
    """Copy or download `name` into `target`; False when the source does not have it."""
    if is_local(source_id):
        path = Path(source_id) / name
        if not path.is_file():
            return False
        copy_file(path, target)
    elif source_id == "gdrive":
        _gdrive_download(name, target)
    else:
        if not _http_download(f"{source_id}/{name}", target):
            return False
    if is_html(target):
        raise DownloadError(
            f"{origin(source_id, name)}: is an HTML page, not {name} (Google Drive serves one when the "
            f"file's download quota is exceeded); {WORKAROUND}"
        )
    return True


def _http_download(url: str, target: Path) -> bool:
    try:
        response = urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return False
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise DownloadError(f"{url}: cannot download ({getattr(exc, 'reason', exc)})") from None
    with response, open(target, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with Progress(total, f"download {url}", unit="B", log_every_s=LOG_EVERY_S) as progress:
            try:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    progress.update(len(chunk))
            except OSError as exc:
                raise_if_full(exc, target)
                raise DownloadError(f"{url}: download interrupted ({exc})") from None
    if total is not None and target.stat().st_size != total:
        raise DownloadError(f"{url}: got {target.stat().st_size} bytes of {total}; download again")
    return True


def _gdrive_download(name: str, target: Path) -> None:
    try:
        import gdown  # an optional extra (faceattr[gdrive]): only this source needs it
    except ImportError:
        raise DownloadError(
            f"the 'gdrive' source needs gdown: pip install 'faceattr[gdrive]'; or {WORKAROUND}"
        ) from None
    file_id = GDRIVE_IDS[name]
    try:
        result = gdown.download(id=file_id, output=str(target), quiet=not sys.stderr.isatty())
    except Exception as exc:  # gdown raises its own types (quota, permissions, network)
        raise DownloadError(f"Google Drive file {file_id} ({name}): {exc}; {WORKAROUND}") from None
    if result is None or not target.is_file():
        raise DownloadError(f"Google Drive file {file_id} ({name}): download failed; {WORKAROUND}")


def copy_file(source: Path, target: Path) -> None:
    try:
        shutil.copyfile(source, target)
    except OSError as exc:
        raise_if_full(exc, target)  # shutil's own message names neither file
        raise


def is_html(path: Path) -> bool:
    with open(path, "rb") as f:
        return looks_like_html(f.read(1024))
