"""Real MRML scenes on slicer-core, set up the way Slicer's application sets them up."""

from __future__ import annotations

import pytest
from headless_slicer import HeadlessScene


@pytest.fixture
def headless() -> HeadlessScene:
    return HeadlessScene()


@pytest.fixture
def scene(headless):
    return headless.scene
