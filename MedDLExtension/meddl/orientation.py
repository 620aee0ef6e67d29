"""Closest-canonical (RAS) reordering of voxel arrays, for models trained on RAS-ordered arrays.

Many networks (deepbet among them) were trained on arrays in nibabel's closest-canonical
order: array axis 0 runs towards +R, axis 1 towards +A and
axis 2 towards +S. The reordering is a pure permutation and flip of voxels, so it is exact
and invertible; no resampling happens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .image import LPS_TO_RAS, Image


@dataclass(frozen=True)
class Reorientation:
    """How an image's (i, j, k) axes map onto the R, A, S world axes."""

    world_axis: tuple[int, int, int]  # world_axis[a] = 0 (R), 1 (A) or 2 (S) for voxel axis a
    flipped: tuple[bool, bool, bool]  # voxel axis a runs towards -R/-A/-S

    @classmethod
    def of(cls, image: Image) -> Reorientation:
        ras_axes = LPS_TO_RAS @ image.direction
        weight = np.abs(ras_axes)
        world_axis = [0, 0, 0]
        for _ in range(3):
            world, axis = np.unravel_index(np.argmax(weight), weight.shape)
            world_axis[axis] = int(world)
            weight[world, :] = -1.0
            weight[:, axis] = -1.0
        flipped = tuple(bool(ras_axes[world_axis[a], a] < 0) for a in range(3))
        return cls(tuple(world_axis), flipped)

    def to_canonical(self, kji: np.ndarray) -> np.ndarray:
        """(k, j, i) array -> (R, A, S)-ordered array."""
        ijk = np.transpose(kji, (2, 1, 0))
        for axis in range(3):
            if self.flipped[axis]:
                ijk = np.flip(ijk, axis)
        order = [self.world_axis.index(world) for world in range(3)]
        return np.ascontiguousarray(np.transpose(ijk, order))

    def from_canonical(self, ras: np.ndarray) -> np.ndarray:
        """(R, A, S)-ordered array -> (k, j, i) array on the original grid."""
        ijk = np.transpose(ras, self.world_axis)
        for axis in range(3):
            if self.flipped[axis]:
                ijk = np.flip(ijk, axis)
        return np.ascontiguousarray(np.transpose(ijk, (2, 1, 0)))
