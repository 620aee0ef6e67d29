"""Shared fixtures: an oblique anisotropic image, the real MNI152 files, genuine nnU-Net results folders."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from meddl.image import Image
from meddl.sample_data import mni152_paths
from meddl_testing import oblique_direction


@pytest.fixture
def oblique_image() -> Image:
    """Anisotropic, off-origin, oblique image with distinct values everywhere."""
    array = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)
    return Image(array, (0.7, 1.3, 2.9), (12.5, -31.0, 7.25), oblique_direction())


@pytest.fixture(autouse=True)
def private_model_folder(tmp_path_factory, monkeypatch):
    """No test reads or writes the user's real model folder."""
    monkeypatch.setenv("MEDDL_MODELS_DIR", str(tmp_path_factory.mktemp("models")))


@pytest.fixture(scope="session")
def mni() -> dict[str, Path]:
    return mni152_paths()


@pytest.fixture(scope="session")
def nnunet_results():
    """kind -> nnU-Net v2 results folder (Trainer__Plans__configuration), trained by nnU-Net on first use.

    Kinds: "3d", "3d-2folds", "2d", "two-channel", "regions", "cascade" (see nnunet_folders.KINDS). Built
    lazily and cached across sessions, so tests that do not call it pay nothing.
    """
    if importlib.util.find_spec("nnunetv2") is None:
        pytest.skip("nnunetv2 is not installed (make test installs it: requirements-dev.txt, Makefile)")
    import nnunet_folders

    return lambda kind: nnunet_folders.make_results_folder(None, kind)
