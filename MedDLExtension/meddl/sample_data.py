"""Real sample images that ship inside PyPI wheels (loaded from the installed package, never copied)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from .errors import InputError

MNI_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}


def mni152_paths() -> dict[str, Path]:
    """The MNI ICBM152 2009a symmetric T1 and its grey/white-matter maps from the nilearn wheel."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        raise InputError("the MNI152 sample needs the Python package nilearn: pip install nilearn")
    folder = Path(spec.origin).parent / "datasets" / "data"
    paths = {key: folder / name for key, name in MNI_FILES.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise InputError(f"MNI152 files missing from the nilearn package: {', '.join(missing)}")
    return paths


def tissue_probability(array: np.ndarray) -> np.ndarray:
    """Probabilities in 0..1 from a tissue map; nilearn stores them as uint8 0..255 (no NIfTI scaling)."""
    if np.issubdtype(array.dtype, np.integer):
        return array.astype(np.float32) / np.iinfo(array.dtype).max
    return array.astype(np.float32)


def reference_brain_mask(gm: np.ndarray, wm: np.ndarray) -> np.ndarray:
    """The reference brain: grey + white matter probability above one half."""
    return (tissue_probability(gm) + tissue_probability(wm)) > 0.5

