"""Files clients upload to a MedDL server: streamed to disk under names the server makes, bounded in size,
removed when unused; and the safe unpacking of a `.zip` upload into a folder (how DICOM folders travel).

A client's file name never becomes a path: an upload is stored as `<random id><suffix>`, the suffix from a
whitelist (it selects the reader). Image headers that may name another file for their data (NRRD's `data
file`, MetaImage's `ElementDataFile`) are refused unless the data is inside the file itself, so that no
upload can make the server read one of its own files.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import secrets
import shutil
import stat
import struct
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Optional

from ..errors import InputError, MeddlError
from ..io import IMAGE_SUFFIXES

SUFFIXES = (*IMAGE_SUFFIXES, ".zip", ".pt", ".pth", ".json", ".png", ".jpg", ".jpeg", ".dcm", ".csv")
REFERENCE_PATTERN = re.compile(r"^upload:([A-Za-z0-9_-]{16,64})$")
HEADER_CHECKED = (".nrrd", ".nhdr", ".mha", ".mhd")  # formats whose header may point at a data file elsewhere
MAX_HEADER_BYTES = 1 << 20
MAX_ZIP_MEMBERS = 100_000
MAX_ZIP_DEPTH = 32
MAX_ZIP_DIRECTORY_BYTES = MAX_ZIP_MEMBERS * 512  # a zip's list of entries, read whole into memory by zipfile
CHUNK = 1 << 20


class UploadTooLarge(InputError):
    """An upload above the server's limit (HTTP 413)."""


class TooManyUploads(MeddlError):
    """A key already holds its limit of uploads no job has taken, those being written included (HTTP 429)."""


def suffix_of(name: str) -> str:
    """The whitelisted suffix `name` ends with (the longest, so .nii.gz before .gz), or ""."""
    lower = name.lower()
    return max((suffix for suffix in SUFFIXES if lower.endswith(suffix)), key=len, default="")


def check_suffix(suffix: str) -> str:
    suffix = (suffix or "").strip().lower()
    if suffix not in SUFFIXES:
        raise InputError(f"X-MedDL-Suffix {suffix[:20]!r} is not one the server accepts ({' '.join(SUFFIXES)})")
    return suffix


NRRD_LINE_BREAK = re.compile(rb"\r\n|\r|\n")  # teem ends a header line at any of these
META_LOCAL = re.compile(rb"[ \t]*ElementDataFile[ \t]*[=:][ \t]*(?i:LOCAL)[ \t\r]*")


def _letters(text: bytes) -> bytes:
    """`text` reduced to its letters and digits, lowercase: how a field name is compared (spaces, case and
    punctuation never hide a `data file` or `ElementDataFile` field)."""
    return re.sub(rb"[^A-Za-z0-9]", b"", text).lower()


def check_image_header(path: Path, shown: str = "", name: str = "") -> None:
    """Refuse a NRRD or MetaImage header that takes its data from another file (only data inside the file
    itself, or no data reference at all, is accepted). `name`: the file's name if `path` has a temporary one.

    The check is stricter than the readers: any line that names the field in any spelling or case, with any
    line ending the readers know (teem ends NRRD lines at CR too; MetaIO takes ':' for '='), and a header that
    does not end within MAX_HEADER_BYTES is refused (its data reference could lie beyond what was checked)."""
    name = (name or path.name).lower()
    shown = shown or path.name
    if not name.endswith(HEADER_CHECKED):
        return
    with open(path, "rb") as stream:
        header = stream.read(MAX_HEADER_BYTES + 1)
    whole = len(header) <= MAX_HEADER_BYTES
    if name.endswith((".nrrd", ".nhdr")):
        for line in NRRD_LINE_BREAK.split(header[:MAX_HEADER_BYTES]):
            if not line:
                return  # the header ends at the first blank line
            if line.startswith(b"#") or b":" not in line:
                continue
            if _letters(line.split(b":", 1)[0]) == b"datafile":
                raise InputError(f"{shown}: a NRRD header that names a separate data file is not accepted by the "
                                 "server; send a .nrrd with its data inside (or a .nii.gz)")
        if not whole:
            raise InputError(f"{shown}: the NRRD header does not end within its first {MAX_HEADER_BYTES >> 20} MB")
        return
    for line in header[:MAX_HEADER_BYTES].split(b"\n"):  # MetaIO reads lines up to LF
        if META_LOCAL.fullmatch(line):
            return  # the data follows the header in this file
        if any(_letters(part).startswith(b"elementdatafile") for part in line.split(b"\r")):
            raise InputError(f"{shown}: a MetaImage header that names a separate data file is not accepted by "
                             "the server; send a .mha with its data inside (ElementDataFile = LOCAL)")
    if not whole:
        raise InputError(f"{shown}: the MetaImage header does not end within its first {MAX_HEADER_BYTES >> 20} MB")


@dataclass
class Upload:
    id: str
    owner: str
    suffix: str
    path: Path
    size: int
    created: float = field(default_factory=time.monotonic)
    claimed: bool = False  # taken by a job being set up


class UploadStore:
    """The uploads of every key, in one folder; each key sees only its own."""

    def __init__(self, folder: Path, max_bytes: int, ttl_s: float) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._uploads: dict[str, Upload] = {}
        self._writing: collections.Counter[str] = collections.Counter()  # uploads being written, per key
        self._lock = threading.Lock()

    def open(self, owner: str, suffix: str, declared: Optional[int], limit: Optional[int] = None) -> PartialUpload:
        """A new upload being written; `declared` is the Content-Length, when the client sent one. `limit`: the
        most uploads a key may hold that no job has taken, counting those being written (TooManyUploads)."""
        suffix = check_suffix(suffix)
        if declared is not None and declared > self.max_bytes:
            raise UploadTooLarge(self._too_large())
        upload_id = secrets.token_urlsafe(24)
        with self._lock:
            held = self._writing[owner] + sum(1 for upload in self._uploads.values() if upload.owner == owner)
            if limit is not None and held >= limit:
                raise TooManyUploads(f"this key has {held} uploads no job has taken yet (or being sent), the "
                                     "server's limit")
            self._writing[owner] += 1
        try:
            return PartialUpload(self, Upload(upload_id, owner, suffix, self.folder / f"{upload_id}{suffix}", 0))
        except BaseException:
            self._written(owner)
            raise

    def _written(self, owner: str) -> None:
        """An upload of `owner` is no longer being written (it is complete, or it was discarded)."""
        with self._lock:
            self._writing[owner] -= 1
            if self._writing[owner] <= 0:
                del self._writing[owner]

    def _too_large(self) -> str:
        return f"the upload is larger than the server's limit of {self.max_bytes / (1 << 20):g} MB"

    def _add(self, upload: Upload) -> None:
        with self._lock:
            self._uploads[upload.id] = upload
            self._writing[upload.owner] -= 1  # counted among the held uploads from now on
            if self._writing[upload.owner] <= 0:
                del self._writing[upload.owner]

    def get(self, owner: str, upload_id: str) -> Optional[Upload]:
        with self._lock:
            upload = self._uploads.get(upload_id)
            return upload if upload is not None and upload.owner == owner else None

    def claim(self, owner: str, upload_ids: list[str]) -> list[Upload]:
        """Take these uploads of `owner` for a job (each upload serves one job); InputError naming the first
        that is not there (or already taken)."""
        with self._lock:
            found = []
            for upload_id in dict.fromkeys(upload_ids):
                upload = self._uploads.get(upload_id)
                if upload is None or upload.owner != owner or upload.claimed:
                    raise InputError(f"upload:{upload_id} is not an upload of this key (or it expired, or another "
                                     "job took it)")
                found.append(upload)
            for upload in found:
                upload.claimed = True
            return found

    def unclaim(self, uploads: list[Upload]) -> None:
        with self._lock:
            for upload in uploads:
                upload.claimed = False

    def consume(self, uploads: list[Upload]) -> None:
        """Forget uploads a job has taken over (their files moved into the job's folder or unpacked there)."""
        with self._lock:
            for upload in uploads:
                self._uploads.pop(upload.id, None)
        for upload in uploads:
            with contextlib.suppress(FileNotFoundError):
                upload.path.unlink()

    def remove(self, owner: str, upload_id: str) -> bool:
        with self._lock:
            upload = self._uploads.get(upload_id)
            if upload is None or upload.owner != owner or upload.claimed:
                return False
            del self._uploads[upload_id]
        with contextlib.suppress(FileNotFoundError):
            upload.path.unlink()
        return True

    def expire(self, now: Optional[float] = None) -> int:
        """Remove uploads no job took within the time to live; returns how many."""
        now = time.monotonic() if now is None else now
        with self._lock:
            old = [u for u in self._uploads.values() if not u.claimed and now - u.created > self.ttl_s]
            for upload in old:
                del self._uploads[upload.id]
        for upload in old:
            with contextlib.suppress(FileNotFoundError):
                upload.path.unlink()
        return len(old)

    def pending(self, owner: str) -> int:
        """How many uploads of `owner` no job has taken yet (complete ones)."""
        with self._lock:
            return sum(1 for upload in self._uploads.values() if upload.owner == owner)

    def writing(self, owner: str) -> int:
        """How many uploads of `owner` are being written now."""
        with self._lock:
            return self._writing[owner]

    def count(self) -> int:
        with self._lock:
            return len(self._uploads)


class PartialUpload:
    """An upload being streamed to disk: `write` chunks, then `finish`; `discard` (also on any failure) removes
    the partial file. The file is created exclusively, mode 0600, under a temporary name."""

    def __init__(self, store: UploadStore, upload: Upload) -> None:
        self.store = store
        self.upload = upload
        self.partial = store.folder / f".partial-{upload.id}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
        self._descriptor: Optional[int] = os.open(self.partial, flags, 0o600)
        self._open = True  # counted among the store's uploads being written

    def write(self, chunk: bytes) -> None:
        if self.upload.size + len(chunk) > self.store.max_bytes:
            self.discard()
            raise UploadTooLarge(self.store._too_large())
        view = memoryview(chunk)
        while view:
            written = os.write(self._descriptor, view)
            view = view[written:]
        self.upload.size += len(chunk)

    def finish(self) -> Upload:
        os.close(self._descriptor)
        self._descriptor = None
        try:
            check_image_header(self.partial, f"the upload ({self.upload.suffix})", self.upload.path.name)
            os.replace(self.partial, self.upload.path)
        except BaseException:
            self.discard()
            raise
        self._open = False
        self.store._add(self.upload)
        return self.upload

    def discard(self) -> None:
        if self._descriptor is not None:
            with contextlib.suppress(OSError):
                os.close(self._descriptor)
            self._descriptor = None
        with contextlib.suppress(FileNotFoundError):
            self.partial.unlink()
        if self._open:
            self._open = False
            self.store._written(self.upload.owner)


def _member_parts(info: zipfile.ZipInfo) -> tuple[str, ...]:
    """The path of a zip member as safe components; InputError for absolute paths, `..`, links and oddities."""
    name = info.filename
    if "\\" in name or "\0" in name or name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise InputError(f"the zip holds {name[:80]!r}: absolute paths and backslashes are not accepted")
    parts = tuple(part for part in PurePosixPath(name).parts if part not in ("", "."))
    if any(part == ".." for part in parts):
        raise InputError(f"the zip holds {name[:80]!r}: '..' is not accepted")
    if len(parts) > MAX_ZIP_DEPTH:
        raise InputError(f"the zip holds {name[:80]!r}: folders nested deeper than {MAX_ZIP_DEPTH}")
    kind = stat.S_IFMT(info.external_attr >> 16)  # 0: only permissions (or none) were stored
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise InputError(f"the zip holds {name[:80]!r}, which is a link or a special file: not accepted")
    if info.flag_bits & 0x1:
        raise InputError(f"the zip holds {name[:80]!r}, which is encrypted: not accepted")
    return parts


def extract_zip(archive: Path, destination: Path, max_bytes: int) -> Path:
    """Unpack `archive` into the new folder `destination`; no member may leave it, be a link, or push the total
    past `max_bytes` (counted as it is written: a header's sizes may lie). On any failure nothing is left.
    Returns the folder, or the one folder it holds when the zip held a single top folder and nothing else."""
    destination.mkdir(mode=0o700)
    try:
        try:
            _extract(archive, destination, max_bytes)
        except OSError as error:  # e.g. a member that is both a file and a folder
            raise InputError(f"the zip cannot be unpacked: {error.strerror or error}") from None
    except BaseException:
        shutil.rmtree(destination, ignore_errors=True)
        raise
    children = list(destination.iterdir())
    if len(children) == 1 and children[0].is_dir() and not children[0].is_symlink():
        return children[0]
    return destination


def _directory(archive: Path) -> tuple[int, int]:
    """The number of entries and the size of the zip's central directory as its end record gives them (zipfile
    reads that many bytes and makes an object of each entry before anyone can count them); (0, 0) when it
    cannot be read here (zipfile then says what is wrong)."""
    try:
        with open(archive, "rb") as stream:
            record = zipfile._EndRecData(stream)  # zipfile has no public reader of the end record
    except (AttributeError, OSError, ValueError, struct.error):
        return 0, 0
    return (0, 0) if record is None else (record[zipfile._ECD_ENTRIES_TOTAL], record[zipfile._ECD_SIZE])


def _extract(archive: Path, destination: Path, max_bytes: int) -> None:
    entries, size = _directory(archive)
    if entries > MAX_ZIP_MEMBERS:
        raise InputError(f"the zip holds {entries} entries, more than {MAX_ZIP_MEMBERS}")
    if size > MAX_ZIP_DIRECTORY_BYTES:
        raise InputError(f"the zip's list of entries is {size / 1e6:.0f} MB, more than "
                         f"{MAX_ZIP_DIRECTORY_BYTES / 1e6:.0f} MB (at most {MAX_ZIP_MEMBERS} entries are accepted)")
    try:
        bundle = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise InputError(f"the upload is not a readable zip file: {error}") from None
    with bundle:
        members = bundle.infolist()
        if len(members) > MAX_ZIP_MEMBERS:
            raise InputError(f"the zip holds {len(members)} entries, more than {MAX_ZIP_MEMBERS}")
        declared = sum(info.file_size for info in members)
        if declared > max_bytes:
            raise InputError(f"the zip unpacks to {declared / 1e6:.0f} MB, more than the server's limit of "
                             f"{max_bytes / 1e6:.0f} MB")
        seen: set[tuple[str, ...]] = set()
        written = 0
        for info in members:
            parts = _member_parts(info)
            if not parts:
                continue
            folded = tuple(part.lower() for part in parts)
            if folded in seen:
                raise InputError(f"the zip holds {info.filename[:80]!r} twice")
            seen.add(folded)
            target = destination.joinpath(*parts)
            if info.is_dir():
                target.mkdir(mode=0o700, parents=True, exist_ok=True)
                continue
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not target.parent.resolve().is_relative_to(destination.resolve()):
                raise InputError(f"the zip holds {info.filename[:80]!r}, which would leave its folder")
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
            try:
                with bundle.open(info) as source, os.fdopen(os.open(target, flags, 0o600), "wb") as sink:
                    while True:
                        chunk = source.read(CHUNK)
                        if not chunk:
                            break
                        written += len(chunk)
                        if written > max_bytes:
                            raise InputError(f"the zip unpacks to more than the server's limit of "
                                             f"{max_bytes / 1e6:.0f} MB")
                        sink.write(chunk)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError, EOFError,
                    ValueError) as error:  # a corrupt member, an unsupported compression, a wrong CRC
                raise InputError(f"the zip's member {info.filename[:80]!r} cannot be read: {error}") from None
            except FileExistsError:
                raise InputError(f"the zip holds {info.filename[:80]!r} twice") from None
            check_image_header(target, f"{info.filename[:80]} in the zip")
