"""The model library inside Slicer: the model folder, installs and imports as background jobs.

Listing and removal run in Slicer's process (they need no torch); installing and importing run
on the engine worker, because validation loads the model and runs it once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from meddl.library import store
from meddl.library.overview import ModelRow, model_rows

from .jobs import EngineJob

# The import form: card fields a user may have to fill in, with their command-line options.
CARD_FORM = (("task", "Task", "segmentation"), ("channels", "Input channels", "1"),
             ("labels", "Labels (1:Name,2:Name)", ""), ("license", "Licence", ""), ("modality", "Modality", ""),
             ("roi", "Patch size (96,96,96)", ""))


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
    return EngineJob(["models", "install", model_id, *(["--trust-model"] if trust else [])], device="cpu")


def start_import(path: str | Path, model_id: str | None = None, form: dict[str, Any] | None = None,
                 trust: bool = False) -> EngineJob:
    """Import a bundle folder/zip, TorchScript file or checkpoint; form values fill missing card fields."""
    arguments = ["models", "import", str(path)]
    if model_id:
        arguments += ["--id", model_id]
    for field, _label, _default in CARD_FORM:
        value = (form or {}).get(field)
        if value not in (None, ""):
            arguments += [f"--{field}", str(value)]
    return EngineJob(arguments + (["--trust-model"] if trust else []), device="cpu")


def remove_model(model_id: str) -> int:
    """Delete an installed model; returns the bytes freed."""
    return store.remove(model_id)
