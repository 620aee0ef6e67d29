"""Where a model's files and card are, by format, without loading anything (Slicer's process lists models
with this before torch is installed)."""

from __future__ import annotations

from pathlib import Path

MEDDL_CARD = "configs/meddl_card.json"  # MedDL's card inside a MONAI bundle, beside metadata.json
MODEL_SUFFIXES = (".ts", ".pt", ".pth")  # a TorchScript file or a checkpoint, with its card beside it


def is_bundle(folder: Path) -> bool:
    return (folder / "configs" / "metadata.json").is_file()


def card_path_for(model_path: Path) -> Path:
    """The card of a model: inside a bundle folder, or beside a model file (model.pt -> model.json)."""
    return model_path / MEDDL_CARD if model_path.is_dir() else model_path.with_suffix(".json")
