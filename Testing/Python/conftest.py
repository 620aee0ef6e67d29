"""Shared fixtures: an oblique anisotropic image and the real MNI152 files."""

from __future__ import annotations

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
