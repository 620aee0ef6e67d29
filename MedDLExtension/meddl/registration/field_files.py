"""Displacement-field files in ITK's convention (vector pixels, LPS mm, fixed -> moving, on the fixed grid).

Reading and writing need only SimpleITK, not torch, so Slicer's own process can import the result.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..files import atomic_path
from ..image import Image
from ..io import image_suffix


def write_displacement_field(displacement: np.ndarray, grid: Image, path) -> None:
    """An ITK displacement-field image (vector pixels, LPS mm, fixed -> moving) on the fixed grid, whole."""
    field = sitk.GetImageFromArray(np.asarray(displacement, np.float64), isVector=True)
    field.SetSpacing(grid.spacing)
    field.SetOrigin(grid.origin)
    field.SetDirection(tuple(np.asarray(grid.direction, float).ravel()))
    with atomic_path(path, image_suffix(path)) as temporary:
        sitk.WriteImage(field, str(temporary), useCompression=str(path).endswith(".gz"))


def read_displacement_field(path) -> tuple[np.ndarray, Image]:
    """(k, j, i, 3) LPS displacements and their grid from an ITK displacement-field file."""
    field = sitk.ReadImage(str(path))
    if field.GetNumberOfComponentsPerPixel() != 3 or field.GetDimension() != 3:
        raise InputError(f"{path} is not a 3D displacement field (3-vector pixels)")
    array = sitk.GetArrayFromImage(field).astype(np.float64)
    grid = Image(np.zeros(array.shape[:3], np.float32), field.GetSpacing(), field.GetOrigin(),
                 np.array(field.GetDirection()).reshape(3, 3))
    return array, grid
