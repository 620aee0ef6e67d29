"""The user's model folder: one sub-folder per installed model, with a record of where it came from.

Outside Slicer the folder is $MEDDL_MODELS_DIR, else the platform's user data folder
(~/.local/share/meddl/models on Linux, %LOCALAPPDATA%/MedDL/models on Windows,
~/Library/Application Support/MedDL/models on macOS). Inside Slicer, MedDLLib points it at
MedDL/models in Slicer's settings folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelError

RECORD = "meddl_install.json"
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


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
    if not ID_PATTERN.match(model_id or ""):
        raise ModelError(f"model id {model_id!r} must be letters, digits, '.', '_' or '-' (at most 100)")
    return model_id


def installed(model_id: str) -> InstalledModel | None:
    folder = models_dir() / check_id(model_id)
    record_path = folder / RECORD
    if not record_path.is_file():
        return None
    return InstalledModel(model_id, folder, json.loads(record_path.read_text(encoding="utf-8")))


def check_new_id(model_id: str) -> str:
    """A valid id that no model (nor a folder left in the library) uses yet."""
    model_id = check_id(model_id)
    if (models_dir() / model_id).exists():
        raise ModelError(f"a model named {model_id!r} is already in the library; choose another name or remove "
                         "it first")
    return model_id


def list_installed() -> list[InstalledModel]:
    root = models_dir()
    if not root.is_dir():
        return []
    found = (installed(p.name) for p in sorted(root.iterdir()) if p.is_dir() and ID_PATTERN.match(p.name))
    return [model for model in found if model is not None]


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but is not ours, or the platform cannot tell: leave its folder alone
    return True


def clean_stale() -> None:
    """Delete folders left by a process that was killed (a cancelled install or removal, or a training
    cancelled while it rewrote its checkpoint: `files.staged_folder`'s `.ID.partial-PID` and `.ID.old-PID`)."""
    root = models_dir()
    patterns = (".staging-*", ".removing-*", ".*.partial-*", ".*.old-*")
    leftovers = [folder for pattern in patterns for folder in root.glob(pattern)] if root.is_dir() else []
    for folder in leftovers:
        pid = folder.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _process_alive(int(pid)):
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
    """Write the record and rename the staging folder into place: the install appears whole."""
    (staging / RECORD).write_text(json.dumps(record, indent=1), encoding="utf-8")
    target = models_dir() / model_id
    if target.exists():
        raise ModelError(f"model {model_id!r} is already installed; remove it first")
    os.replace(staging, target)
    return InstalledModel(model_id, target, record)


def remove(model_id: str) -> int:
    """Delete an installed model; returns the bytes freed."""
    model = installed(model_id)
    if model is None:
        raise ModelError(f"model {model_id!r} is not installed in {models_dir()}")
    size = folder_size(model.folder)
    trash = model.folder.with_name(f".removing-{model_id}-{os.getpid()}")
    os.replace(model.folder, trash)  # disappears from the library at once, even if deleting takes time
    shutil.rmtree(trash)
    return size
