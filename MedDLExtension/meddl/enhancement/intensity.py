"""Intensity scaling shared by the enhancement methods: robust z-score in, the same scale back out."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..image import Image, check_volume


@dataclass(frozen=True)
class Scaling:
    """x -> (x - centre) / spread, and back."""

    centre: float
    spread: float

    @classmethod
    def of(cls, array: np.ndarray) -> Scaling:
        values = array[np.isfinite(array)]
        spread = float(values.std())
        return cls(float(values.mean()), spread if spread > 0 else 1.0)

    def forward(self, array: np.ndarray) -> np.ndarray:
        return ((array - self.centre) / self.spread).astype(np.float32)

    def back(self, array: np.ndarray) -> np.ndarray:
        return (array * self.spread + self.centre).astype(np.float32)


def checked_scalar_volume(image: Image, what: str = "input image") -> np.ndarray:
    """The volume as float32 (k, j, i); refuses 4D, empty, constant and non-finite input."""
    check_volume(image, what=what)
    if image.array.ndim != 3:
        raise InputError(f"the {what} must be a single-channel 3D volume, but it has shape {image.array.shape}")
    array = image.array.astype(np.float32)
    if not np.isfinite(array).all():
        raise InputError(f"the {what} has NaN or infinite voxels; enhancement needs every voxel finite")
    if min(array.shape) < 4:
        raise InputError(f"the {what} is too small to enhance (shape {array.shape}); it needs at least 4 voxels "
                         "along each axis")
    if float(array.max()) == float(array.min()):
        raise InputError(f"the {what} is constant: there is nothing to enhance")
    return array
