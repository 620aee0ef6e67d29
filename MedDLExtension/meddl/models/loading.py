"""Resolve a model reference (catalog id, library id, file or folder) to networks, card and pipeline.

Each format has its loader (bundle folder, TorchScript file, checkpoint with a card, catalog entry);
all produce the same `LoadedModel`, so every task and front end runs every format.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch

from ..errors import ModelError
from . import catalog, store
from .bundle import load_bundle
from .card import card_from_dict, read_card
from .formats import card_path_for, is_bundle
from .loaded import LoadedModel
from .networks import (
    build_monai_network,
    is_torchscript,
    load_checkpoint,
    load_torchscript,
    load_weights,
    state_dict_of,
)


def _installed(model_id: str) -> store.InstalledModel | None:
    return store.installed(model_id) if store.ID_PATTERN.match(model_id) else None


_cache: OrderedDict[tuple, LoadedModel] = OrderedDict()
_cache_size = 0


def set_model_cache_size(size: int) -> None:
    """Keep up to `size` loaded models in memory (the long-lived worker uses 2; default none)."""
    global _cache_size
    _cache_size = size
    while len(_cache) > size:
        _cache.popitem(last=False)


def _cache_key(reference: str, trust: bool, card: str | Path | None) -> tuple:
    """A key that changes when the model's files change on disk."""
    path = Path(reference)
    files = [p for p in ([path] if path.is_file() else path.rglob("*") if path.is_dir() else []) if p.is_file()]
    if card or path.is_file():
        files.append(Path(card) if card else card_path_for(path))
    stamps = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files if p.exists())
    return reference, trust, str(card), stamps


def load_model(reference: str | Path, trust: bool = False, card: str | Path | None = None) -> LoadedModel:
    """Load a catalogued model by id, a MONAI bundle folder, or a model file with its JSON card."""
    if _cache_size <= 0:
        return _load(str(reference), trust, card)
    key = _cache_key(str(reference), trust, card)
    if key in _cache:
        _cache.move_to_end(key)
        return _cache[key]
    model = _load(str(reference), trust, card)
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


def _load(text: str, trust: bool, card: str | Path | None) -> LoadedModel:
    if not Path(text).exists():
        installed = _installed(text)
        if installed is not None:  # the user's model folder, with the trust given at install time
            return _load(str(installed.model_path), trust or installed.trusted, None)
        if catalog.has_entry(text):
            return _load_entry(text)
    path = Path(text)
    if not path.exists():
        known = ", ".join(catalog.entry_ids())
        raise ModelError(f"model not found: {text!r} is neither a catalogued model ({known}) nor a file or folder")
    if path.is_dir():
        if not is_bundle(path):
            raise ModelError(f"folder {path} is not a MONAI bundle (no configs/metadata.json)")
        return load_bundle(path, trust)
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
