"""What a user painted on a few slices: which slices were drawn (along any axes), where a fill may reach,
and whether there is anything to fill from. numpy and scipy only, so Slicer's process can check a painting
before a worker starts.

A slice counts as drawn along an axis when its painted voxels cover an area (2 x 2 blocks of voxels) that the
slices drawn along other axes do not explain: those cross it in lines, or in bands where neighbouring slices
were drawn.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from scipy import ndimage

from .errors import InputError

AREA_BLOCK = 2  # a drawn slice holds fully painted AREA_BLOCK x AREA_BLOCK blocks


def _areas(uncovered: np.ndarray, axis: int) -> np.ndarray:
    """Voxels of `uncovered` at the corner of a fully painted AREA_BLOCK x AREA_BLOCK block in their slice
    along `axis`."""
    block = [AREA_BLOCK] * 3
    block[axis] = 1
    return ndimage.binary_erosion(uncovered, structure=np.ones(block, bool))


def drawn_slices(painted: np.ndarray) -> dict[int, np.ndarray]:
    """Array axis -> indices of the slices drawn along it.

    Greedy: the slice (of any axis) whose not yet explained painted voxels cover the largest area is drawn, its
    voxels are explained, and so on while some slice still holds an area. Slices drawn along one axis cross
    the others in lines (bands, where neighbouring slices were drawn), which are explained once those slices
    are: so slices along any axes, neighbours included, count only where they were drawn."""
    uncovered = painted > 0
    areas = [_areas(uncovered, axis) for axis in range(3)]
    found: dict[int, list[int]] = {}
    while True:
        counts = [area.sum(axis=tuple(b for b in range(3) if b != axis)) for axis, area in enumerate(areas)]
        axis = int(np.argmax([count.max() for count in counts]))
        index = int(np.argmax(counts[axis]))
        if counts[axis][index] == 0:
            return {axis: np.array(sorted(indices)) for axis, indices in sorted(found.items())}
        found.setdefault(axis, []).append(index)
        _explain(uncovered, areas, axis, index)


def _explain(uncovered: np.ndarray, areas: list[np.ndarray], axis: int, index: int) -> None:
    """Mark slice `index` along `axis` as drawn and update the areas of the slices it crosses."""
    plane = [slice(None)] * 3
    plane[axis] = index
    uncovered[tuple(plane)] = False
    areas[axis][tuple(plane)] = False
    low, high = max(index - AREA_BLOCK, 0), min(index + AREA_BLOCK + 1, uncovered.shape[axis])
    slab = [slice(None)] * 3
    slab[axis] = slice(low, high)
    inner_low, inner_high = max(index - AREA_BLOCK + 1, 0) - low, min(index + AREA_BLOCK, high) - low
    inner = [slice(None)] * 3
    inner[axis] = slice(low + inner_low, low + inner_high)
    local = [slice(None)] * 3
    local[axis] = slice(inner_low, inner_high)
    for other in (b for b in range(3) if b != axis):
        areas[other][tuple(inner)] = _areas(uncovered[tuple(slab)], other)[tuple(local)]


def fill_region(drawn: dict[int, np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """Voxels the fill may label: along each axis with two or more drawn slices, the span from one drawing
    interval (the median gap) before the first drawn slice to one after the last."""
    region = np.zeros(shape, bool)
    for axis, indices in drawn.items():
        if len(indices) < 2:
            continue
        gap = int(np.median(np.diff(indices)))
        span = [slice(None)] * 3
        span[axis] = slice(max(int(indices[0]) - gap, 0), int(indices[-1]) + gap + 1)
        region[tuple(span)] = True
    return region


def check_painting(painted: np.ndarray, values: list[int], drawn: dict[int, np.ndarray],
                   names: Optional[dict[int, str]] = None) -> None:
    """Refuse a painting there is nothing to fill from, with what to do about it (`names`: the segment of each
    label value, for the message)."""
    present = np.unique(painted)
    if not np.array_equal(present, np.round(present)) or present.min() < 0 or present.max() > 255:
        raise InputError("the painted labels must be whole label values from 0 (background) to 255")
    missing = [value for value in values if value not in set(present.tolist())]
    if missing:
        if names:
            raise InputError(f"segment(s) {', '.join(names[value] for value in missing)} are empty: paint each on "
                             "a few slices first")
        raise InputError(f"label value(s) {missing} are not painted anywhere: paint each segment on a few slices")
    if not drawn:
        raise InputError("no painted slice covers an area: paint the segments on a few slices (not just lines)")
    if not any(len(indices) >= 2 for indices in drawn.values()):
        raise InputError("only one slice is painted: paint at least two slices along the same axis, with the "
                         "slices to fill between them")
