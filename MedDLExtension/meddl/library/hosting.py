"""Where MONAI Model Zoo bundles are hosted, and fetching a bundle from Hugging Face file by file, verified.

* ngc: NVIDIA NGC's "monaihosting" zip of a version, the archive the Zoo's index (models/model_info.json) gives
  a SHA-1 for; every catalogued entry uses it.
* github: the Zoo's former release assets, also one zip per version.
* huggingface: huggingface.co/MONAI/<name>, one git tag per version (the Zoo's releases since 2025, which the
  index gives no checksum). The tag's files are listed through the Hugging Face API, each with its checksum
  (SHA-256 for LFS files, the git blob SHA-1 for the others); each file is downloaded and checked.

Base URLs can be overridden (MEDDL_MODEL_ZOO_URL, MEDDL_HUGGINGFACE_URL), as the tests do with a loopback server.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Optional

from ..errors import ModelError
from ..progress import Progress, no_progress
from .download import ChecksumMismatch, download, file_hash

ZIP_URLS = {
    "ngc": "https://api.ngc.nvidia.com/v2/models/nvidia/monaihosting/{name_lower}/versions/{version}/files/"
           "{name}_v{version}.zip",
    "github": "https://github.com/Project-MONAI/model-zoo/releases/download/hosting_storage_v1/{name}_v{version}.zip",
}
HUGGINGFACE_URL = "https://huggingface.co"
MAX_LISTING_PAGES = 100


@dataclass(frozen=True)
class RemoteFile:
    """One file of a Hugging Face bundle: its path in the repository, size and checksum."""

    path: str
    size: int
    checksum: dict


def hosting_of(zoo: dict) -> str:
    return zoo.get("hosting", "ngc")


def zip_url(zoo: dict) -> str:
    """The archive of a Zoo bundle hosted as one zip (ngc, github); MEDDL_MODEL_ZOO_URL overrides the template
    ({name}, {name_lower}, {version})."""
    template = os.environ.get("MEDDL_MODEL_ZOO_URL") or ZIP_URLS[hosting_of(zoo)]
    return template.format(name=zoo["name"], name_lower=zoo["name"].lower(), version=zoo["version"])


def huggingface_base() -> str:
    return (os.environ.get("MEDDL_HUGGINGFACE_URL") or HUGGINGFACE_URL).rstrip("/")


def _repo_and_revision(zoo: dict) -> tuple[str, str]:
    return zoo.get("repo") or f"MONAI/{zoo['name']}", zoo.get("revision") or zoo["version"]


def huggingface_source(zoo: dict, base: Optional[str] = None) -> str:
    """The repository and revision a bundle is fetched from, as a URL (the install record's source)."""
    repo, revision = _repo_and_revision(zoo)
    return f"{base or huggingface_base()}/{repo}/tree/{urllib.parse.quote(revision, safe='')}"


def _get_json(url: str, timeout: float) -> tuple[object, Optional[str]]:
    """The JSON at `url` and the next page's URL (the Link header's rel="next"), if any."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body, link = response.read(), response.headers.get("Link", "")
    except urllib.error.HTTPError as error:
        raise ModelError(f"listing the files of {url} failed: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError) as error:
        raise ModelError(f"listing the files of {url} failed: {getattr(error, 'reason', error)}") from None
    try:
        data = json.loads(body)
    except ValueError:
        raise ModelError(f"the file list at {url} is not JSON") from None
    found = re.search(r'<([^>]+)>\s*;\s*rel="?next"?', link)
    return data, urllib.parse.urljoin(url, found.group(1)) if found else None


def _remote_file(item: dict, url: str) -> RemoteFile:
    """A listing entry, refused without a checksum or with a path that could leave the bundle folder."""
    path = item.get("path")
    parts = PurePosixPath(path).parts if isinstance(path, str) else ()
    if not parts or path.startswith("/") or any(part in ("..", ".") for part in parts) or "\\" in path:
        raise ModelError(f"the file list at {url} names an unsafe path {path!r}; nothing was installed")
    lfs = item.get("lfs") if isinstance(item.get("lfs"), dict) else None
    if lfs and re.fullmatch(r"[0-9a-f]{64}", str(lfs.get("oid", ""))):
        return RemoteFile(path, int(lfs.get("size", item.get("size", 0))), {"algorithm": "sha256", "value": lfs["oid"]})
    if not lfs and re.fullmatch(r"[0-9a-f]{40}", str(item.get("oid", ""))):
        return RemoteFile(path, int(item.get("size", 0)), {"algorithm": "git-blob-sha1", "value": item["oid"]})
    raise ModelError(f"the file list at {url} gives no checksum for {path}; nothing was installed")


def huggingface_files(zoo: dict, base: Optional[str] = None, timeout: float = 30.0) -> list[RemoteFile]:
    """Every file of the bundle's revision, with its checksum, from the Hugging Face API's tree listing."""
    repo, revision = _repo_and_revision(zoo)
    url: Optional[str] = (f"{base or huggingface_base()}/api/models/{repo}/tree/"
                          f"{urllib.parse.quote(revision, safe='')}?recursive=true")
    files: list[RemoteFile] = []
    for _ in range(MAX_LISTING_PAGES):
        if url is None:
            break
        data, next_url = _get_json(url, timeout)
        if not isinstance(data, list):
            raise ModelError(f"the file list at {url} is not a list of files")
        files += [_remote_file(item, url) for item in data if isinstance(item, dict) and item.get("type") == "file"]
        url = next_url
    if not any(f.path == "configs/metadata.json" for f in files):
        raise ModelError(f"{huggingface_source(zoo, base)} holds no MONAI bundle (no configs/metadata.json)")
    return files


def _already_fetched(path: Path, checksum: dict) -> bool:
    """A file a previous attempt downloaded and verified, still intact (a changed one is deleted)."""
    if not path.is_file():
        return False
    if file_hash(path, checksum["algorithm"]) == checksum["value"]:
        return True
    path.unlink()
    return False


def fetch_huggingface(zoo: dict, folder: Path, progress: Optional[Progress] = None,
                      should_stop: Callable[[], bool] = lambda: False, base: Optional[str] = None) -> dict:
    """Download every file of a Hugging Face bundle into `folder`, each verified against the listing's checksum;
    a partial file resumes. Returns the checksums ({path: checksum}). On a mismatch `folder` is deleted (nothing
    of it is used) and ChecksumMismatch is raised; after an interruption or a cancel it is kept for a resume."""
    report = progress or no_progress
    base = base or huggingface_base()
    repo, revision = _repo_and_revision(zoo)
    files = huggingface_files(zoo, base)
    total, done = max(1, sum(f.size for f in files)), 0
    for remote in files:
        target = folder / remote.path
        if not _already_fetched(target, remote.checksum):
            target.parent.mkdir(parents=True, exist_ok=True)
            url = f"{base}/{repo}/resolve/{urllib.parse.quote(revision, safe='')}/{urllib.parse.quote(remote.path)}"
            start = done

            def part(fraction: float, message: str, start: int = start, size: int = remote.size,
                     name: str = remote.path) -> None:
                report((start + fraction * size) / total, f"{name}: {message}")

            try:
                download(url, target, remote.checksum, part, should_stop)
            except ChecksumMismatch:
                shutil.rmtree(folder, ignore_errors=True)
                raise
        done += remote.size
        report(done / total, f"fetched {remote.path}")
    return {f.path: f.checksum for f in files}
