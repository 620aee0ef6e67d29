"""Coarser grids over a fixed image and exact linear interpolation between grids that share a direction.

The deformation is optimised on a grid coarser than the image where the image has many voxels: a
stationary velocity field needs no more detail than its smoothness allows, and its integration (six
sample-and-add steps, each with a gradient) is what makes full-resolution levels slow. Moving a field
between such grids is separable linear interpolation, done as three small matrix products, which is
exact for block-centre grids and parallel on the CPU (unlike `grid_sample`'s backward pass).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..image import Image


def coarser_grid(grid: Image, factor: int) -> Image:
    """The grid of the centres of `factor`^3 blocks of `grid` (as avg_pool3d with ceil_mode makes them)."""
    if factor == 1:
        return grid
    shape = tuple(math.ceil(n / factor) for n in grid.shape[:3])
    origin = grid.index_to_lps() @ np.array([(factor - 1) / 2] * 3 + [1.0])
    return Image(np.zeros(shape, np.float32), tuple(np.asarray(grid.spacing) * factor), tuple(origin[:3]),
                 grid.direction)


def control_factor(grid: Image, max_voxels: int) -> int:
    """The smallest block size that leaves at most `max_voxels` grid points (1 when the grid is small enough)."""
    voxels = float(np.prod(grid.shape[:3]))
    factor = 1
    while voxels / factor**3 > max_voxels:
        factor += 1
    return factor


def _axis_weights(scale: float, offset: float, fine: int, coarse: int) -> torch.Tensor:
    """(fine, coarse) linear interpolation weights for coarse index = scale * fine index + offset, clamped."""
    position = np.clip(scale * np.arange(fine) + offset, 0, coarse - 1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, coarse - 1)
    weights = np.zeros((fine, coarse))
    rows = np.arange(fine)
    np.add.at(weights, (rows, low), 1 - (position - low))
    np.add.at(weights, (rows, high), position - low)
    return torch.from_numpy(weights)


def resampler(source: Image, target: Image):
    """A function taking a (C, k, j, i) field on `source`'s grid to `target`'s grid by linear interpolation
    (values beyond `source` repeat its border). Both grids must share their direction."""
    mapping = np.linalg.inv(source.index_to_lps()) @ target.index_to_lps()
    if not np.allclose(mapping[:3, :3], np.diag(np.diag(mapping[:3, :3])), atol=1e-6):
        raise ValueError("grids with different directions cannot be resampled separably")
    # axis order of the arrays is (k, j, i): index axis 2, 1, 0
    matrices = [_axis_weights(mapping[axis, axis], mapping[axis, 3], target.shape[2 - axis], source.shape[2 - axis])
                for axis in (2, 1, 0)]

    def apply(field: torch.Tensor) -> torch.Tensor:
        k, j, i = (matrix.to(field) for matrix in matrices)
        out = torch.einsum("ckji,Ii->ckjI", field, i)
        out = torch.einsum("ckjI,Jj->ckJI", out, j)
        return torch.einsum("ckJI,Kk->cKJI", out, k)

    return apply
