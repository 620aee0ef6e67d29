"""The reliability suite's shared models: one of every task, built once per session (read-only in tests)."""

from __future__ import annotations

import pytest
from meddl_testing import write_task_models


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict:
    """{task: model file, "folder": where they and their images (noisy, fixed, moving .nii.gz) are}."""
    folder = tmp_path_factory.mktemp("reliability-models")
    return {**write_task_models(folder), "folder": folder}
