"""The model library inside Slicer: the model folder, installs and imports as background jobs.

Listing and removal run in Slicer's process (they need no torch); installing and importing run
on the engine worker, because validation loads the model and runs it once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from meddl.cli.models import CARD_FORM, ImportRequest, InstallRequest
from meddl.library.overview import ModelRow, model_rows
from meddl.models import store

from .jobs import EngineJob

__all__ = ["CARD_FORM", "library_rows", "remove_model", "start_import", "start_install", "slicer_models_dir",
           "use_models_dir"]


def use_models_dir(folder: str | Path) -> Path:
    """Point MedDL (this process and every new worker) at a model folder, e.g. in Slicer's settings."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["MEDDL_MODELS_DIR"] = str(folder)
    return folder


def slicer_models_dir(settings_file: str) -> Path:
    """MedDL/models beside Slicer's settings file (slicer.app.slicerUserSettingsFilePath)."""
    return Path(settings_file).parent / "MedDL" / "models"


def library_rows(task: str, search: str = "", installed_only: bool = False) -> list[ModelRow]:
    return model_rows(search=search, task=task, installed=True if installed_only else None)


def start_install(model_id: str, trust: bool = False) -> EngineJob:
    """Download, verify and validate a catalogued model on the worker (cancel keeps the partial download)."""
    return EngineJob(InstallRequest(model_id, trust), device="cpu")


def start_import(path: str | Path, model_id: str | None = None, form: dict[str, Any] | None = None,
                 trust: bool = False) -> EngineJob:
    """Import a bundle folder/zip, TorchScript file or checkpoint; form values fill missing card fields."""
    values = tuple((name, str(value)) for name, value in (form or {}).items() if value not in (None, ""))
    return EngineJob(ImportRequest(str(path), model_id or None, values, trust), device="cpu")


def remove_model(model_id: str) -> int:
    """Delete an installed model; returns the bytes freed."""
    return store.remove(model_id)
