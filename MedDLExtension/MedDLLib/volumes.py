"""The one place where volume nodes become engine images and back, with exact geometry."""

from __future__ import annotations

import numpy as np
import slicer
import vtk
from meddl.errors import InputError
from meddl.image import Image, image_from_index_to_ras


def _matrix_to_numpy(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _numpy_to_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def world_ijk_to_ras(volume_node) -> np.ndarray:
    """IJK-to-world (RAS) matrix, including a linear parent transform.

    A volume under a non-linear transform is refused: its voxels have no single grid in the
    world until the transform is hardened, and guessing would misplace the result.
    """
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    ijk_to_ras = _matrix_to_numpy(matrix)
    transform_node = volume_node.GetParentTransformNode()
    if transform_node is not None:
        if not transform_node.IsTransformToWorldLinear():
            raise InputError(f"volume {volume_node.GetName()!r} is under a non-linear transform: "
                             "harden the transform first")
        to_world = vtk.vtkMatrix4x4()
        transform_node.GetMatrixTransformToWorld(to_world)
        ijk_to_ras = _matrix_to_numpy(to_world) @ ijk_to_ras
    return ijk_to_ras


def image_from_volume_node(volume_node) -> Image:
    """A copy of the node's voxels with its world geometry; the node is not changed."""
    if volume_node is None or volume_node.GetImageData() is None:
        name = volume_node.GetName() if volume_node is not None else "None"
        raise InputError(f"volume {name!r} has no image data")
    array = np.array(slicer.util.arrayFromVolume(volume_node), copy=True)
    return image_from_index_to_ras(array, world_ijk_to_ras(volume_node))


def set_volume_node_from_image(volume_node, image: Image) -> None:
    """Replace a node's voxels and geometry by an image's (for nodes MedDL created)."""
    volume_node.SetIJKToRASMatrix(_numpy_to_matrix(image.index_to_ras()))
    slicer.util.updateVolumeFromArray(volume_node, np.ascontiguousarray(image.array))


def volume_node_from_image(scene, image: Image, name: str, class_name: str = "vtkMRMLScalarVolumeNode"):
    """Add a new volume node holding the image (with display nodes)."""
    volume_node = scene.AddNewNodeByClass(class_name, name)
    set_volume_node_from_image(volume_node, image)
    volume_node.CreateDefaultDisplayNodes()
    return volume_node


def ijk_to_ras_matrix(image: Image) -> vtk.vtkMatrix4x4:
    return _numpy_to_matrix(image.index_to_ras())
