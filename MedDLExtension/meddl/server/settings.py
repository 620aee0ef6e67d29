"""What a MedDL server is started with, and its own folders: the settings of `meddl serve`, the default work
folder, the model library it reads (its --models-dir) and the names its folders take in what a client sees.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..errors import ModelError
from ..library.overview import model_rows
from ..models import catalog, store
from .workdir import WorkDir


@dataclass(frozen=True)
class ServerSettings:
    """What `meddl serve` is started with."""

    key_file: Path
    work_dir: Path
    models_dir: Optional[Path] = None
    max_upload_mb: float = 1024.0
    max_jobs_per_key: int = 4
    workers: int = 1
    result_ttl_s: float = 3600.0
    allow_model_uploads: bool = False
    allow_model_import: bool = False
    max_unpacked_mb: Optional[float] = None  # a zip upload's unpacked size (default: 4x the upload limit)
    session_idle_s: float = 900.0  # an interactive session without a job for this long is closed

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * (1 << 20))

    @property
    def max_unpacked_bytes(self) -> int:
        return int((self.max_unpacked_mb or 4 * self.max_upload_mb) * (1 << 20))


def default_work_dir(port: int) -> Path:
    """A folder of this user and port under the system's temporary folder."""
    try:
        user = re.sub(r"[^A-Za-z0-9_.-]", "_", os.getlogin())
    except OSError:
        user = str(os.getuid()) if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"meddl-server-{user}-{port}"


_environment_lock = threading.Lock()


@contextlib.contextmanager
def models_folder(path: Optional[Path]):
    """The model library is read from $MEDDL_MODELS_DIR: point it at the server's --models-dir meanwhile."""
    if path is None:
        yield
        return
    with _environment_lock:
        before = os.environ.get("MEDDL_MODELS_DIR")
        os.environ["MEDDL_MODELS_DIR"] = str(path)
        try:
            yield
        finally:
            if before is None:
                os.environ.pop("MEDDL_MODELS_DIR", None)
            else:
                os.environ["MEDDL_MODELS_DIR"] = before


def model_list(settings: ServerSettings) -> list[dict[str, Any]]:
    with models_folder(settings.models_dir):
        return [row.as_dict() for row in model_rows()]


def known_model(settings: ServerSettings, model_id: str) -> bool:
    if not store.ID_PATTERN.match(model_id) or model_id.endswith("."):
        return False
    with models_folder(settings.models_dir):
        if catalog.has_entry(model_id):
            return True
        try:
            return store.installed(model_id) is not None
        except ModelError:  # a damaged library folder: the worker says what is wrong with it
            return True


def server_folders(settings: ServerSettings, work: WorkDir) -> list[tuple[str, str]]:
    """The server's own folders outside a job's (its work folder, its model library) and what a client sees
    instead, for messages that name them (a library model's folder in a worker's error)."""
    with models_folder(settings.models_dir):
        library = store.models_dir()
    pairs = []
    for path, token in ((work.path, "<server work folder>"), (library, "<model library>")):
        for variant in dict.fromkeys((Path(path).absolute(), Path(path).resolve())):
            if len(variant.parts) > 1:  # never a bare root
                pairs.append((str(variant), token))
    return pairs
