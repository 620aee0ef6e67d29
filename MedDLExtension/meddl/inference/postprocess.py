"""Turning network outputs into clean label maps."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

FULL_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 26-connected component of a binary mask."""
    labelled, count = ndimage.label(mask, structure=FULL_CONNECTIVITY)
    if count <= 1:
        return mask.astype(bool)
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0
    return labelled == int(np.argmax(sizes))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill cavities that the background cannot reach from the border."""
    return ndimage.binary_fill_holes(mask)


def clean_labels(labels: np.ndarray, values: list[int], keep_largest: bool, fill: bool) -> np.ndarray:
    """Per label: optionally keep the largest component and fill holes (within its bounding box)."""
    if not (keep_largest or fill):
        return labels
    cleaned = np.zeros_like(labels)
    for value in values:
        mask = labels == value
        box = ndimage.find_objects(mask.astype(np.uint8))
        if not box or box[0] is None:
            continue
        region = mask[box[0]]
        if keep_largest:
            region = largest_component(region)
        if fill:
            # a hole may be filled only where no other label claims the voxel
            region = fill_holes(region) & np.isin(labels[box[0]], (0, value))
        cleaned[box[0]][region] = value
    return cleaned
