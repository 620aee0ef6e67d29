"""Resumable, verified downloads: a .part file that grows, a checksum before anything is used."""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Optional

from ..errors import MeddlError, ModelError
from ..progress import Progress, no_progress

CHUNK = 1 << 20
HASHES = ("sha256", "sha1", "git-blob-sha1")  # git-blob-sha1: git's object id, sha1(b"blob <size>\0" + content)


class Cancelled(MeddlError):
    """The user stopped a download; nothing was installed."""

    exit_code = 130


class ChecksumMismatch(ModelError):
    """A downloaded file is not the one published; it was deleted."""


def file_hash(path: Path, algorithm: str = "sha256") -> str:
    """The hex digest of a file: sha256, sha1, or git-blob-sha1 (the id git gives the file's content)."""
    if algorithm == "git-blob-sha1":
        digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    else:
        digest = hashlib.new(algorithm)
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, target: Path, checksum: Optional[dict], progress: Optional[Progress] = None,
             should_stop: Callable[[], bool] = lambda: False, timeout: float = 30.0) -> Path:
    """Download `url` to `target`, resuming `target.part` if present, then verify the checksum.

    On a checksum mismatch the partial file is deleted and ModelError is raised; on cancel the
    partial file is kept for a later resume and Cancelled is raised.
    """
    report = progress or no_progress
    partial = target.with_name(target.name + ".part")
    done = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={done}-"} if done else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and done:  # already complete
            response = None
        else:
            raise ModelError(f"download of {url} failed: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError) as error:
        raise ModelError(f"download of {url} failed: {getattr(error, 'reason', error)}") from None
    if response is not None:
        with response:
            if done and response.status != 206:  # the server ignored the range: start again
                done = 0
            total = done + int(response.headers.get("Content-Length") or 0)
            with open(partial, "ab" if done else "wb") as stream:
                while True:
                    if should_stop():
                        raise Cancelled("download cancelled; it resumes where it stopped next time")
                    try:
                        block = response.read(CHUNK)
                    except OSError as error:
                        raise ModelError(f"download of {url} was interrupted ({error}); "
                                         "run the install again to resume") from None
                    if not block:
                        break
                    stream.write(block)
                    done += len(block)
                    report(done / total if total else 0.0, f"downloaded {done / 1e6:.1f} MB")
            if total and done < total:  # the connection closed early without an error
                raise ModelError(f"download of {url} was interrupted at {done} of {total} bytes; "
                                 "run the install again to resume")
    _verify(partial, checksum, url)
    partial.replace(target)
    return target


def _verify(path: Path, checksum: Optional[dict], url: str) -> None:
    if not checksum:
        return
    algorithm, expected = checksum.get("algorithm", "sha256"), str(checksum["value"]).lower()
    if algorithm not in HASHES:
        raise ModelError(f"unsupported checksum algorithm {algorithm!r}")
    actual = file_hash(path, algorithm)
    if actual != expected:
        path.unlink()
        raise ChecksumMismatch(f"checksum mismatch for {url}: expected {algorithm} {expected}, got {actual}; "
                         "the download was discarded")
