"""Which promptable family a model is, and opening a session on it.

A reference is a path or a library id. nnInteractive models are folders (plans.json, dataset.json,
inference_session_class.json or inference_info.json, fold_N/checkpoint_final.pth); SAM 2 models are a checkpoint
with its configuration (see `sam2`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from ..device import select_compute
from ..errors import ModelError
from ..image import Image
from ..models import store
from ..models.formats import PROMPTABLE_METADATA, existing_path, is_promptable_folder
from .session import Prompt, PromptSession


def resolve(reference: str | Path) -> tuple[Path, bool]:
    """The model's path, and whether the library trusts it (it was installed trusted)."""
    text = str(reference)
    path = existing_path(text)
    if path is not None:
        return path, False
    installed = store.installed(text) if store.ID_PATTERN.match(text) else None
    if installed is None:
        raise ModelError(f"promptable model not found: {text!r} is neither a file or folder nor a model of the "
                         f"library ({store.models_dir()})")
    store.verify(installed)
    return installed.model_path, installed.trusted


def family_of(path: Path) -> Optional[str]:
    """'nnInteractive', 'SAM 2' or None."""
    if is_promptable_folder(path):
        return "nnInteractive"
    from .sam2_model import is_sam2_model  # imports torch

    return "SAM 2" if is_sam2_model(path) else None


def open_session(reference: str | Path, trust: bool = False, device: str = "auto", seed: int = 0) -> PromptSession:
    """A session on a promptable model (nothing that runs code unless `trust` or installed trusted)."""
    path, trusted = resolve(reference)
    family = family_of(path)
    compute = select_compute(device)
    if family == "nnInteractive":
        from .nninteractive import InteractiveSession  # torch and the nninteractive package load only now

        return InteractiveSession(path, trust or trusted, str(compute.device), seed)
    if family == "SAM 2":
        from .sam2 import Sam2Session

        return Sam2Session(path, trust or trusted, str(compute.device), seed)
    raise ModelError(f"{path} is not a promptable model MedDL knows: an nnInteractive model folder (plans.json, "
                     f"dataset.json, {' or '.join(PROMPTABLE_METADATA)}, fold_N/checkpoint_final.pth) or a SAM 2 "
                     "checkpoint with its configuration")


UNKNOWN_LICENCE = "unknown: see where the weights came from"


def card_for(name: str, session: PromptSession) -> dict:
    """The library card of a promptable model: its family, prompt kinds and the weights' licence (as the
    family's package determines it: the first line of a LICENSE file beside the weights), one label."""
    licence = session.license if session.license and session.license != "!!MISSING!!" else UNKNOWN_LICENCE
    return {"name": name, "title": f"{name} ({session.family})", "task": "promptable",
            "input": {"channels": 1}, "labels": [{"value": 1, "name": "object"}], "license": licence,
            "description": f"{session.family} promptable model: {', '.join(session.kinds)} prompts",
            "provenance": f"{session.family} model imported by MedDL"}


def dry_run(path: Path, trust: bool) -> PromptSession:
    """Open the model and run one point on a small random image, as the library does for every task's models;
    returns the session (its family and licence make the card)."""
    session = open_session(path, trust, device="cpu")
    array = np.random.default_rng(0).normal(0, 1, size=(16, 24, 24)).astype(np.float32)
    session.set_image(Image(array))
    session.apply(Prompt("point", ((12.0, 12.0, 8.0),), space="LPS"))
    return session
