"""Where a model's files and card are, by format, without loading anything (Slicer's process lists models
with this before torch is installed)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import ModelError

MEDDL_CARD = "configs/meddl_card.json"  # MedDL's card inside a MONAI bundle, beside metadata.json
MODEL_SUFFIXES = (".ts", ".pt", ".pth")  # a TorchScript file or a checkpoint, with its card beside it
# What trusting a bundle means: said wherever MedDL asks for the trust (the error, the install dialog, docs).
TRUST_MEANS = ("Trusting a bundle lets MONAI run it as its authors wrote it: every '$' expression of its configs is "
               "evaluated as Python, every '_target_' it names is imported and called, and the code in its scripts/ "
               "folder is imported, all with your user's rights (your files, your network).")
NNUNET_CONFIGURATIONS = ("3d_fullres", "3d_cascade_fullres", "2d", "3d_lowres")  # those MedDL runs, preferred first


def is_bundle(folder: Path) -> bool:
    return (folder / "configs" / "metadata.json").is_file()


def existing_path(reference) -> Optional[Path]:
    """The reference as a path when something exists there, else None (a model id, a wrong path, a name too long
    for the file system or holding a NUL character)."""
    try:
        path = Path(reference)
        return path if path.exists() else None
    except (OSError, ValueError):
        return None


def model_files(reference) -> list[Path]:
    """The files a model reference reads (a model file and its card, or a folder); none for an id. A job's
    outputs must not be one of them."""
    path = existing_path(reference) if reference else None
    if path is None:
        return []
    return [path] if path.is_dir() else [path, card_path_for(path)]


def card_path_for(model_path: Path) -> Path:
    """The card of a model: inside a bundle folder, or beside a model file (model.pt -> model.json)."""
    return model_path / MEDDL_CARD if model_path.is_dir() else model_path.with_suffix(".json")


PROMPTABLE_METADATA = ("inference_info.json", "inference_session_class.json")  # nnInteractive's session files


def is_promptable_folder(path: Path) -> bool:
    """An nnInteractive model folder: nnU-Net's layout plus the session metadata its package reads."""
    return path.is_dir() and any((path / name).is_file() for name in PROMPTABLE_METADATA)


def _is_results_folder(path: Path) -> bool:
    return (path / "plans.json").is_file() and (path / "dataset.json").is_file() and \
        any(path.glob("fold_*/checkpoint_*.pth")) and not is_promptable_folder(path)


def nnunet_results_folder(path: Path, configuration: Optional[str] = None) -> Optional[Path]:
    """The Trainer__Plans__configuration folder `path` is or holds (the preferred configuration when it
    holds several, or the one asked for); None when it is no nnU-Net folder."""
    path = Path(path)
    if not path.is_dir():
        return None
    if _is_results_folder(path):
        return path
    found = {child.name.rsplit("__", 1)[-1]: child for child in sorted(path.iterdir())
             if child.is_dir() and child.name.count("__") == 2 and _is_results_folder(child)}
    if not found:
        return None
    if configuration:
        if configuration not in found:
            raise ModelError(f"{path} has no nnU-Net configuration {configuration!r}; it has {', '.join(found)}")
        return found[configuration]
    preferred = [name for name in NNUNET_CONFIGURATIONS if name in found]
    if not preferred:
        raise ModelError(f"{path} holds the nnU-Net configurations {', '.join(found)}, none of which MedDL runs "
                         f"yet ({', '.join(NNUNET_CONFIGURATIONS)})")
    return found[preferred[0]]
