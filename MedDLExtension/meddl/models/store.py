"""The user's model folder: one sub-folder per installed model, with a record of where it came from.

Outside Slicer the folder is $MEDDL_MODELS_DIR, else the platform's user data folder
(~/.local/share/meddl/models on Linux, %LOCALAPPDATA%/MedDL/models on Windows,
~/Library/Application Support/MedDL/models on macOS). Inside Slicer, MedDLLib points it at
MedDL/models in Slicer's settings folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import outputs
from ..errors import ModelError

RECORD = "meddl_install.json"
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
REQUIRED_KEYS = ("kind", "model_path")  # what loading needs from a record (trained records have no installed_at)


def models_dir() -> Path:
    """The folder installed and imported models live in (created on demand)."""
    configured = os.environ.get("MEDDL_MODELS_DIR")
    if configured:
        return Path(configured)
    home = Path.home()
    if sys.platform.startswith("win"):
        return Path(os.environ.get("LOCALAPPDATA", home / "AppData" / "Local")) / "MedDL" / "models"
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / "MedDL" / "models"
    return Path(os.environ.get("XDG_DATA_HOME", home / ".local" / "share")) / "meddl" / "models"


@dataclass(frozen=True)
class InstalledModel:
    """A model folder in the library and its install record."""

    id: str
    folder: Path
    record: dict[str, Any]

    @property
    def trusted(self) -> bool:
        return bool(self.record.get("trusted", False))

    @property
    def model_path(self) -> Path:
        """What load_model takes: the folder (a bundle) or the model file inside it."""
        relative = self.record.get("model_path", ".")
        return self.folder / relative


def check_id(model_id: str) -> str:
    if not ID_PATTERN.match(model_id or "") or model_id.endswith("."):  # Windows drops a trailing dot
        raise ModelError(f"model id {model_id!r} must be letters, digits, '.', '_' or '-' (at most 100, not ending "
                         "in '.')")
    return model_id


@dataclass(frozen=True)
class BrokenModel:
    """A folder in the library whose install record cannot be used (listed as broken; removable by id)."""

    id: str
    folder: Path
    reason: str


def read_record(folder: Path) -> dict[str, Any]:
    """The install record of a library folder; ModelError saying what is wrong with it otherwise."""
    record_path = folder / RECORD
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{RECORD} is missing") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise ModelError(f"{RECORD} is not readable JSON ({type(error).__name__})") from None
    if not isinstance(record, dict):
        raise ModelError(f"{RECORD} is not a JSON object")
    missing = [key for key in REQUIRED_KEYS if key not in record]
    if missing:
        raise ModelError(f"{RECORD} lacks {', '.join(missing)}")
    model_path = record["model_path"]
    if not isinstance(model_path, str) or not (folder / model_path).resolve().is_relative_to(folder.resolve()):
        raise ModelError(f"{RECORD} has an invalid model_path")
    if not isinstance(record.get("files", {}), dict) or not isinstance(record.get("trusted", False), bool):
        raise ModelError(f"{RECORD} has invalid 'files' or 'trusted' values")
    return record


def installed(model_id: str) -> InstalledModel | None:
    """The library's model `model_id`; None when there is no such folder (or it has no record, e.g. a folder
    the user made); ModelError when its record is broken (the message says how to remove it)."""
    folder = models_dir() / check_id(model_id)
    if not (folder / RECORD).is_file():
        return None
    try:
        return InstalledModel(model_id, folder, read_record(folder))
    except ModelError as error:
        raise ModelError(f"model {model_id!r} in the library is broken: {error}; `meddl models remove {model_id}` "
                         "deletes it, then install or import it again") from None


def check_new_id(model_id: str) -> str:
    """A valid id that no model (nor a folder left in the library) uses yet."""
    model_id = check_id(model_id)
    root = models_dir()
    taken = [p.name for p in root.iterdir() if p.name.lower() == model_id.lower()] if root.is_dir() else []
    if taken:  # compared without case: on macOS and Windows they would be one folder
        raise ModelError(f"a model named {taken[0]!r} is already in the library; choose another name or remove "
                         "it first")
    return model_id


def library_contents() -> tuple[list[InstalledModel], list[BrokenModel]]:
    """Every model folder in the library: the usable ones, and those whose record is missing or broken."""
    root = models_dir()
    if not root.is_dir():
        return [], []
    usable: list[InstalledModel] = []
    broken: list[BrokenModel] = []
    for folder in sorted(root.iterdir()):
        if not (folder.is_dir() and ID_PATTERN.match(folder.name)):
            continue
        try:
            usable.append(InstalledModel(folder.name, folder, read_record(folder)))
        except ModelError as error:
            broken.append(BrokenModel(folder.name, folder, str(error)))
    return usable, broken


def list_installed() -> list[InstalledModel]:
    """The usable models of the library (broken ones: `library_contents`)."""
    return library_contents()[0]


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file of a model folder (but its record), by path relative to the folder."""
    return {path.relative_to(folder).as_posix(): sha256_of(path)
            for path in sorted(folder.rglob("*")) if path.is_file() and path != folder / RECORD}


_verified: set[tuple] = set()  # (path, size, mtime_ns, sha256) already checked in this process


def verify(model: InstalledModel) -> None:
    """Check the model's files against the SHA-256 sums recorded at install or import; ModelError on a mismatch.

    Each file is hashed once per process while its size and modification time stay the same (a worker does
    not rehash for every job). Records written before checksums were recorded (no "files": older installs,
    and models trained into the library) are not checked: computing sums now would bless files that may
    already be damaged, and a read should not write into the library.
    """
    for relative, expected in (model.record.get("files") or {}).items():
        path = model.folder / relative
        fix = f"`meddl models remove {model.id}`, then install or import it again"
        try:
            stat = path.stat()
        except OSError:
            raise ModelError(f"model {model.id!r} is damaged: its file {relative} is missing; {fix}") from None
        key = (str(path), stat.st_size, stat.st_mtime_ns, expected)
        if key in _verified:
            continue
        if sha256_of(path) != expected:
            raise ModelError(f"model {model.id!r} is damaged: its file {relative} does not match the checksum "
                             f"recorded when it was installed; {fix}")
        _verified.add(key)


def clean_stale() -> None:
    """Delete folders left by a process that was killed: a cancelled install or removal, or a training
    cancelled while it rewrote its checkpoint (`outputs.staged_folder`'s staging folder)."""
    root = models_dir()
    if not root.is_dir():
        return
    outputs.clean_stale_staging(root)
    for folder in [folder for pattern in (".staging-*", ".removing-*") for folder in root.glob(pattern)]:
        pid = folder.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not outputs.process_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def staging_folder(model_id: str) -> Path:
    """A private folder beside the library for building an install before it is published."""
    root = models_dir()
    root.mkdir(parents=True, exist_ok=True)
    clean_stale()
    staging = root / f".staging-{check_id(model_id)}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    return staging


def publish(staging: Path, model_id: str, record: dict[str, Any]) -> InstalledModel:
    """Write the record (with the SHA-256 of every file) and rename the staging folder into place: the install
    appears whole."""
    record = {**record, "files": file_digests(staging)}
    (staging / RECORD).write_text(json.dumps(record, indent=1), encoding="utf-8")
    target = models_dir() / model_id
    if target.exists():
        raise ModelError(f"model {model_id!r} is already installed; remove it first")
    os.replace(staging, target)
    return InstalledModel(model_id, target, record)


def remove(model_id: str) -> int:
    """Delete an installed model; returns the bytes freed. Needs no valid record: a broken entry is removed too."""
    folder = models_dir() / check_id(model_id)
    if not folder.is_dir():
        raise ModelError(f"model {model_id!r} is not installed in {models_dir()}")
    size = folder_size(folder)
    trash = folder.with_name(f".removing-{model_id}-{os.getpid()}")
    os.replace(folder, trash)  # disappears from the library at once, even if deleting takes time
    if trash.is_symlink():
        trash.unlink()
    else:
        shutil.rmtree(trash)
    return size
