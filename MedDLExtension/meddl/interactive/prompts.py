"""Prompts placed in physical space (RAS, Slicer's world, or LPS, ITK's) mapped to voxels of an image.

Everything is exact index arithmetic through the image's geometry (`Image.index_to_lps`): oblique and
anisotropic grids need no resampling. A point lands on the voxel whose centre is nearest; results are
(k, j, i) indices, the order of MedDL's arrays.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import InputError
from ..image import LPS_TO_RAS, Image

SPACES = ("RAS", "LPS")
Voxel = tuple[int, int, int]
Box = list[list[int]]  # [[k0, k1], [j0, j1], [i0, i1]], stops exclusive


def _continuous_indices(image: Image, points: np.ndarray, space: str) -> np.ndarray:
    """(n, 3) physical points -> (n, 3) continuous (k, j, i) indices."""
    if space not in SPACES:
        raise InputError(f"prompt space must be one of {', '.join(SPACES)}, not {space!r}")
    points = np.asarray(points, dtype=float).reshape(-1, 3)
    if not np.all(np.isfinite(points)):
        raise InputError("a prompt position is not a finite number")
    lps = points @ LPS_TO_RAS.T if space == "RAS" else points  # the flip is its own inverse
    homogeneous = np.c_[lps, np.ones(len(lps))]
    ijk = (np.linalg.inv(image.index_to_lps()) @ homogeneous.T).T[:, :3]
    return ijk[:, ::-1]


def to_voxels(image: Image, points: Sequence[Sequence[float]], space: str = "RAS") -> np.ndarray:
    """(n, 3) integer (k, j, i) indices of the voxels holding physical `points`; InputError when one lies
    outside the image (more than half a voxel beyond its edge voxels' centres)."""
    kji = np.floor(_continuous_indices(image, np.asarray(points), space) + 0.5).astype(int)
    shape = np.array(image.shape)
    outside = np.any((kji < 0) | (kji >= shape), axis=1)
    if outside.any():
        where = np.asarray(points, dtype=float).reshape(-1, 3)[int(np.argmax(outside))]
        raise InputError(f"prompt position {tuple(round(float(v), 3) for v in where)} ({space}) lies outside the "
                         f"image (voxel (k, j, i) {tuple(int(v) for v in kji[outside][0])}, image shape "
                         f"{image.shape})")
    return kji


def point_voxel(image: Image, position: Sequence[float], space: str = "RAS") -> Voxel:
    """The (k, j, i) voxel of one physical point."""
    k, j, i = to_voxels(image, [position], space)[0]
    return int(k), int(j), int(i)


def box_voxels(image: Image, corner_a: Sequence[float], corner_b: Sequence[float], space: str = "RAS") -> Box:
    """The voxel box spanned by two opposite physical corners, both voxels included: [[k0, k1], [j0, j1],
    [i0, i1]] with exclusive stops. A box drawn on one slice has size 1 across it (a 2D box)."""
    corners = to_voxels(image, [corner_a, corner_b], space)
    low, high = corners.min(axis=0), corners.max(axis=0) + 1
    return [[int(a), int(b)] for a, b in zip(low, high)]


def _line(start: np.ndarray, stop: np.ndarray) -> np.ndarray:
    """The voxels of the segment start..stop, one per step along its longest axis (no gaps)."""
    steps = int(np.abs(stop - start).max())
    if steps == 0:
        return start[None]
    fractions = np.linspace(0.0, 1.0, steps + 1)[:, None]
    return np.floor(start + (stop - start) * fractions + 0.5).astype(int)


def scribble_voxels(image: Image, points: Sequence[Sequence[float]], space: str = "RAS",
                    width: int = 1) -> tuple[np.ndarray, Box]:
    """A scribble through physical `points` (a polyline) rasterised into a uint8 mask: the cropped mask and its
    voxel box. `width` > 1 thickens it, within the slice when all points share one slice index."""
    if len(points) == 0:
        raise InputError("a scribble needs at least one point")
    if width < 1:
        raise InputError(f"scribble width must be at least 1 voxel, not {width}")
    continuous = _continuous_indices(image, np.asarray(points), space)
    to_voxels(image, points, space)  # range check with a clear message
    vertices = np.floor(continuous + 0.5).astype(int)
    path = np.concatenate([_line(a, b) for a, b in zip(vertices[:-1], vertices[1:])] or [vertices])
    flat = np.all(vertices == vertices[0], axis=0)  # axes the scribble does not leave
    grow = np.array([0 if flat_axis else width - 1 for flat_axis in flat])
    low = np.maximum(path.min(axis=0) - grow // 2, 0)
    high = np.minimum(path.max(axis=0) + (grow - grow // 2) + 1, np.array(image.shape))
    mask = np.zeros(tuple(high - low), dtype=np.uint8)
    for offset in np.ndindex(*(grow + 1)):
        shifted = path - low - grow // 2 + np.array(offset)
        keep = np.all((shifted >= 0) & (shifted < mask.shape), axis=1)
        mask[tuple(shifted[keep].T)] = 1
    return mask, [[int(a), int(b)] for a, b in zip(low, high)]


def lasso_voxels(image: Image, points: Sequence[Sequence[float]], space: str = "RAS") -> tuple[np.ndarray, Box]:
    """A closed polygon through physical `points`, all on one slice of the image, filled (voxel centres inside
    it, and its outline): the cropped uint8 mask and its voxel box."""
    if len(points) < 3:
        raise InputError("a lasso needs at least three points")
    to_voxels(image, points, space)  # range check with a clear message
    continuous = _continuous_indices(image, np.asarray(points), space)
    vertices = np.floor(continuous + 0.5).astype(int)
    flat = np.flatnonzero(np.all(vertices == vertices[0], axis=0))
    if flat.size == 0:
        raise InputError("a lasso is drawn on one slice: its points do not share a slice of the image")
    across = int(flat[0])
    plane = [axis for axis in range(3) if axis != across]
    low = vertices.min(axis=0)
    high = vertices.max(axis=0) + 1
    rows, columns = np.meshgrid(np.arange(low[plane[0]], high[plane[0]]), np.arange(low[plane[1]], high[plane[1]]),
                                indexing="ij")
    polygon = continuous[:, plane]
    inside = np.zeros(rows.shape, bool)
    for (y0, x0), (y1, x1) in zip(polygon, np.roll(polygon, -1, axis=0)):  # even-odd rule over the edges
        crosses = (y0 > rows) != (y1 > rows)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = x0 + (rows - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (columns < x_at)
    mask = np.zeros(tuple(high - low), dtype=np.uint8)
    view = np.moveaxis(mask, across, 0)[0]
    view[inside] = 1
    outline = np.concatenate([_line(a, b) for a, b in zip(vertices, np.roll(vertices, -1, axis=0))])
    mask[tuple((outline - low).T)] = 1
    return mask, [[int(a), int(b)] for a, b in zip(low, high)]
