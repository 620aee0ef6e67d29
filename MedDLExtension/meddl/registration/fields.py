"""Displacement fields in physical space, in the ITK convention Slicer, ANTs and elastix read.

A transform maps points of the fixed image to points of the moving image, T(x) = x + D(x), with x
in LPS millimetres; D is stored on the fixed image's grid as a (k, j, i, 3) array of LPS vectors.
The warped moving image is moving(T(x)) sampled on the fixed grid. Sampling uses voxel-centre
coordinates (grid_sample with align_corners=True), exactly like ITK's linear interpolator.
"""

from __future__ import annotations

import numpy as np
import torch

from ..image import Image


def lps_points(image: Image) -> torch.Tensor:
    """(k, j, i, 3) LPS coordinates of every voxel centre, float64."""
    kk, jj, ii = torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in image.shape[:3]), indexing="ij")
    index = torch.stack([ii, jj, kk], dim=-1)  # (k, j, i, 3) holding (i, j, k)
    matrix = torch.from_numpy(image.index_to_lps())
    return index @ matrix[:3, :3].T + matrix[:3, 3]


def normalised_coordinates(points: torch.Tensor, image: Image) -> torch.Tensor:
    """LPS points -> grid_sample's [-1, 1] coordinates (x = i, y = j, z = k) on `image`'s grid."""
    inverse = torch.from_numpy(np.linalg.inv(image.index_to_lps())).to(points)
    index = points @ inverse[:3, :3].T + inverse[:3, 3]
    size = torch.tensor([image.shape[2], image.shape[1], image.shape[0]]).to(points)
    return 2.0 * index / (size - 1).clamp(min=1) - 1.0


def sample(volume: torch.Tensor, image: Image, points: torch.Tensor, mode: str = "bilinear",
           padding: str = "zeros") -> torch.Tensor:
    """Values of `volume` ((C, k, j, i) on `image`'s grid) at LPS `points` (..., 3); zero (or the border) outside."""
    grid = normalised_coordinates(points, image).to(volume.dtype)
    spatial = grid.shape[:-1]
    flat = grid.reshape(1, 1, 1, -1, 3) if grid.dim() != 4 else grid[None]
    values = torch.nn.functional.grid_sample(volume[None], flat, mode=mode, padding_mode=padding, align_corners=True)
    return values[0].reshape(volume.shape[0], *spatial)


def warp(moving: Image, fixed: Image, displacement: np.ndarray, labels: bool = False) -> Image:
    """The moving image resampled on the fixed grid through T(x) = x + D(x) (nearest neighbour for labels)."""
    points = lps_points(fixed) + torch.from_numpy(np.asarray(displacement, np.float64))
    volume = torch.from_numpy(np.ascontiguousarray(moving.array, np.float64))[None]
    warped = sample(volume, moving, points, "nearest" if labels else "bilinear")[0].numpy()
    return fixed.with_array(warped.astype(moving.array.dtype if labels else np.float32))


def jacobian_determinant(displacement: np.ndarray, grid: Image, slab: int = 16) -> np.ndarray:
    """det(dT/dx) of T(x) = x + D(x) at every voxel, by central differences in physical space. Computed `slab`
    slices at a time, each with its neighbour slices, so the result is the whole volume's exactly while a 1 mm
    head needs tens of megabytes instead of gigabytes of temporaries."""
    inverse = np.linalg.inv(grid.index_to_lps()[:3, :3])
    depth = displacement.shape[0]
    determinant = np.empty(displacement.shape[:3])
    for start in range(0, depth, slab):
        stop, low = min(start + slab, depth), max(start - 1, 0)
        block = displacement[low:min(stop + 1, depth)]
        by_index = np.stack([np.gradient(block, axis=axis) for axis in (2, 1, 0)], axis=-1)  # d D / d(i, j, k)
        determinant[start:stop] = np.linalg.det(by_index @ inverse + np.eye(3))[start - low:stop - low]
    return determinant


def folded_share(displacement: np.ndarray, grid: Image) -> float:
    """The share of voxels where the transform folds (Jacobian determinant <= 0)."""
    return float(np.mean(jacobian_determinant(displacement, grid) <= 0))


def folding_penalty(displacement: torch.Tensor, grid: Image, margin: float = 0.1) -> torch.Tensor:
    """Mean of relu(margin - det(dT/dx)) over the grid, for a (3, k, j, i) displacement in LPS mm on `grid`:
    zero where the transform keeps at least `margin` of every volume, growing where it folds (differentiable)."""
    components = displacement.permute(1, 2, 3, 0)  # (k, j, i, 3)
    by_index = torch.stack(torch.gradient(components, dim=(2, 1, 0)), dim=-1)  # d D / d(i, j, k)
    inverse = torch.from_numpy(np.linalg.inv(grid.index_to_lps()[:3, :3])).to(by_index)
    jacobian = by_index @ inverse + torch.eye(3).to(by_index)
    return torch.relu(margin - torch.linalg.det(jacobian)).mean()
