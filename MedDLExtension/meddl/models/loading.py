"""Resolve a model reference (catalog id, library id, file or folder) to networks, card and pipeline.

Each format has its loader (bundle folder, TorchScript file, checkpoint with a card, catalog entry);
all produce the same `LoadedModel`, so every task and front end runs every format.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..errors import ModelError
from . import catalog, nnunet, store
from .bundle import load_bundle
from .card import card_from_dict, read_card
from .formats import card_path_for, existing_path, is_bundle, is_promptable_folder, nnunet_results_folder
from .loaded import LoadedModel
from .networks import (
    build_monai_network,
    is_torchscript,
    load_checkpoint,
    load_torchscript,
    load_weights,
    state_dict_of,
)

_cache: OrderedDict[tuple, LoadedModel] = OrderedDict()
_cache_size = 0


def set_model_cache_size(size: int) -> None:
    """Keep up to `size` loaded models in memory (the long-lived worker uses 2; default none)."""
    global _cache_size
    _cache_size = size
    while len(_cache) > size:
        _cache.popitem(last=False)


@dataclass(frozen=True)
class _Resolved:
    """What a reference names: a file or folder, a model of the library, or a catalog entry whose weights
    come with a Python package."""

    path: Optional[Path] = None
    installed: Optional[store.InstalledModel] = None
    entry: Optional[str] = None


def _resolve(text: str) -> _Resolved:
    """An existing path wins; a catalog id is the catalog's model (a library folder of that name counts only
    when it was installed from the catalog); any other id is a library model. ModelError when none exists."""
    path = existing_path(text)
    if path is not None:
        return _Resolved(path=path)
    if store.ID_PATTERN.match(text):
        if catalog.has_entry(text):
            if "python_package" in catalog.get_entry(text)["source"]:
                return _Resolved(entry=text)
            installed = store.installed(text)
            if installed is None or installed.record.get("kind") != "catalog":
                raise ModelError(f"model {text!r} is not installed: `meddl models install {text}` downloads it")
            return _Resolved(installed=installed)
        installed = store.installed(text)
        if installed is not None:
            return _Resolved(installed=installed)
    known = ", ".join(catalog.entry_ids())
    raise ModelError(f"model not found: {text!r} is neither a catalogued model ({known}), a model of the library "
                     f"({store.models_dir()}) nor a file or folder")


def _stamps(files) -> tuple:
    """Identity of files on disk: path, size, modification time and inode."""
    stamps = []
    for path in files:
        try:
            stat = Path(path).stat()
        except OSError:
            continue
        stamps.append((str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino))
    return tuple(stamps)


def _tree(path: Path) -> list[Path]:
    return [p for p in ([path] if path.is_file() else sorted(path.rglob("*")) if path.is_dir() else []) if p.is_file()]


def _cache_key(resolved: _Resolved, trust: bool, card: str | Path | None) -> tuple:
    """A key that changes when the model's files change on disk, or when a library id names another install
    (removed and imported again: a new record, new files)."""
    if resolved.entry is not None:
        return "catalog", resolved.entry, _stamps(catalog.entry_files(resolved.entry).values())
    if resolved.installed is not None:
        model = resolved.installed
        record = json.dumps(model.record, sort_keys=True, default=str)
        return ("library", model.id, str(model.folder), trust, hashlib.sha256(record.encode()).hexdigest(),
                _stamps(_tree(model.folder)))
    path = resolved.path
    files = _tree(path)
    if card or path.is_file():
        files.append(Path(card) if card else card_path_for(path))
    return "path", str(path), trust, str(card), _stamps(files)


def load_model(reference: str | Path, trust: bool = False, card: str | Path | None = None,
               folds: Optional[tuple[str, ...]] = None) -> LoadedModel:
    """Load a catalogued model by id, a model of the library by id, a MONAI bundle folder, an nnU-Net v2 results
    folder (`folds`: which of its folds to ensemble; default all), or a model file with its JSON card."""
    resolved = _resolve(str(reference))
    if _cache_size <= 0:
        return _load(resolved, trust, card, folds)
    key = (_cache_key(resolved, trust, card), folds)
    if key in _cache:
        _cache.move_to_end(key)
        return _cache[key]
    model = _load(resolved, trust, card, folds)
    _cache[key] = model
    set_model_cache_size(_cache_size)
    return model


def _load_entry(model_id: str) -> LoadedModel:
    """A catalog entry whose weights come with a Python package (downloaded ones load from the library)."""
    entry = catalog.get_entry(model_id)
    if "python_package" not in entry["source"]:
        raise ModelError(f"model {model_id!r} is not installed: `meddl models install {model_id}` downloads it")
    card = card_from_dict(entry["card"], f"catalog entry {model_id}")
    networks = {name: load_torchscript(path) for name, path in catalog.entry_files(model_id).items()}
    return LoadedModel(card, networks, entry["pipeline"], f"catalog:{model_id}")


def _load(resolved: _Resolved, trust: bool, card: str | Path | None, folds: Optional[tuple[str, ...]]) -> LoadedModel:
    if resolved.entry is not None:
        model = _load_entry(resolved.entry)
    elif resolved.installed is not None:  # the user's model folder, with the trust given at install time
        installed = resolved.installed
        store.verify(installed)
        overrides = catalog.get_entry(installed.id).get("card_overrides") \
            if installed.record.get("kind") == "catalog" and catalog.has_entry(installed.id) else None
        model = _load_path(installed.model_path, trust or installed.trusted, None, folds, overrides)
    else:
        model = _load_path(resolved.path, trust, card, folds)
    if folds and model.pipeline.get("type") != "nnunet":
        raise ModelError(f"model {model.card.name!r} has no folds to choose: folds are for nnU-Net models")
    return model


def _load_path(path: Path, trust: bool, card: str | Path | None, folds: Optional[tuple[str, ...]],
               overrides: Optional[dict] = None) -> LoadedModel:
    if not path.exists():
        raise ModelError(f"model not found: {path} does not exist")
    if not (path.is_file() or path.is_dir()):
        raise ModelError(f"model {path} is not a regular file or folder (a pipe or a device?)")
    card_file = Path(card) if card else (card_path_for(path) if path.is_file() else None)
    if card_file is not None and card_file.exists() and not card_file.is_file():
        raise ModelError(f"model card {card_file} is not a regular file")
    if is_promptable_folder(path):
        raise ModelError(f"{path} is a promptable model (nnInteractive): it segments from points, boxes and "
                         "scribbles with `meddl interact` or the Segment Editor effect, not on its own")
    if path.is_dir() and nnunet_results_folder(path) is not None:
        return nnunet.load_nnunet(path, trust, folds, overrides=overrides)
    if path.is_dir():
        if not is_bundle(path):
            raise ModelError(f"folder {path} is not a MONAI bundle (no configs/metadata.json)")
        return load_bundle(path, trust, overrides)
    model_card = read_card(card or card_path_for(path))
    if is_torchscript(path):
        network = load_torchscript(path)
    else:
        checkpoint = load_checkpoint(path, trust)
        if isinstance(checkpoint, torch.nn.Module):
            network = checkpoint.eval()
        else:
            network = build_monai_network(model_card.network, f"model card of {path}")
            network = load_weights(network, state_dict_of(checkpoint, path), path)
    return LoadedModel(model_card, {"network": network}, {"type": "sliding-window"}, str(path))


__all__ = ["LoadedModel", "load_model", "set_model_cache_size"]
