"""Intensity scaling shared by the enhancement methods: robust z-score in, the same scale back out."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..image import Image, check_scalar_volume


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
    """The volume as float32 (k, j, i); refuses 4D, empty, constant, non-finite and tiny input."""
    check_scalar_volume(image, what)
    if min(image.shape) < 4:
        raise InputError(f"the {what} is too small to enhance (shape {image.shape}); it needs at least 4 voxels "
                         "along each axis")
    return image.array.astype(np.float32)
