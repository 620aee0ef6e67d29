"""Displacement-field files in ITK's convention (vector pixels, LPS mm, fixed -> moving, on the fixed grid).

Reading and writing need only SimpleITK, not torch, so Slicer's own process can import the result.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..image import Image
from ..outputs import OutputSet, joined


def write_displacement_field(displacement: np.ndarray, grid: Image, path, outputs: Optional[OutputSet] = None) -> None:
    """An ITK displacement-field image (vector pixels, LPS mm, fixed -> moving) on the fixed grid, whole (with
    `outputs`, committed with the job's other outputs)."""
    field = sitk.GetImageFromArray(np.asarray(displacement, np.float64), isVector=True)
    field.SetSpacing(grid.spacing)
    field.SetOrigin(grid.origin)
    field.SetDirection(tuple(np.asarray(grid.direction, float).ravel()))
    with joined(outputs) as staging:
        sitk.WriteImage(field, str(staging.staged(path)), useCompression=str(path).endswith(".gz"))


def read_displacement_field(path) -> tuple[np.ndarray, Image]:
    """(k, j, i, 3) LPS displacements and their grid from an ITK displacement-field file."""
    field = sitk.ReadImage(str(path))
    if field.GetNumberOfComponentsPerPixel() != 3 or field.GetDimension() != 3:
        raise InputError(f"{path} is not a 3D displacement field (3-vector pixels)")
    array = sitk.GetArrayFromImage(field).astype(np.float64)
    grid = Image(np.zeros(array.shape[:3], np.float32), field.GetSpacing(), field.GetOrigin(),
                 np.array(field.GetDirection()).reshape(3, 3))
    return array, grid
