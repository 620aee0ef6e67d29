"""Displacement fields <-> Slicer grid transform nodes, with the same meaning as the ITK file.

The engine's field maps fixed-image points to moving-image points (LPS mm, on the fixed grid).
In Slicer that is the transform's "from parent" direction: a moving volume placed under the
transform node is shown aligned with the fixed one, and hardening resamples it exactly as the
engine warps it. LPS becomes RAS by negating the first two coordinates of points and vectors.
"""

from __future__ import annotations

import numpy as np
import slicer
import vtk
from meddl.image import Image
from vtk.util import numpy_support

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def grid_transform(displacement: np.ndarray, grid: Image) -> slicer.vtkOrientedGridTransform:
    """A vtkOrientedGridTransform (RAS) from a (k, j, i, 3) LPS field on `grid`; linear interpolation."""
    vectors = np.ascontiguousarray(displacement.reshape(-1, 3) @ LPS_TO_RAS, dtype=np.float64)
    data = vtk.vtkImageData()
    data.SetDimensions(grid.shape[2], grid.shape[1], grid.shape[0])
    data.SetSpacing(grid.spacing)
    data.SetOrigin(LPS_TO_RAS @ np.asarray(grid.origin, float))
    array = numpy_support.numpy_to_vtk(vectors, deep=True, array_type=vtk.VTK_DOUBLE)
    array.SetNumberOfComponents(3)
    data.GetPointData().SetScalars(array)
    direction = vtk.vtkMatrix4x4()
    ras_direction = LPS_TO_RAS @ np.asarray(grid.direction, float)
    for row in range(3):
        for column in range(3):
            direction.SetElement(row, column, ras_direction[row, column])
    transform = slicer.vtkOrientedGridTransform()
    transform.SetDisplacementGridData(data)
    transform.SetGridDirectionMatrix(direction)
    transform.SetInterpolationModeToLinear()
    return transform


def grid_transform_node(scene, displacement: np.ndarray, grid: Image, name: str):
    """A new vtkMRMLGridTransformNode holding the field as its from-parent transform."""
    node = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", name)
    node.SetAndObserveTransformFromParent(grid_transform(displacement, grid))
    return node


def harden_through(volume_node, transform_node) -> None:
    """Put the volume under the transform and harden it (Slicer's own resampling)."""
    volume_node.SetAndObserveTransformNodeID(transform_node.GetID())
    slicer.vtkSlicerTransformLogic.hardenTransform(volume_node)
