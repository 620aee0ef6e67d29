"""Volume nodes <-> engine images <-> files: one geometry in RAS (Slicer) and LPS (ITK) alike."""

from __future__ import annotations

import numpy as np
import pytest
import slicer
import vtk
from meddl.errors import InputError
from meddl.io import read_image, write_image
from MedDLLib.volumes import image_from_volume_node, volume_node_from_image, world_ijk_to_ras


def _matrix(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def test_node_round_trip(scene, oblique_image):
    node = volume_node_from_image(scene, oblique_image, "oblique")
    np.testing.assert_allclose(_matrix(node), oblique_image.index_to_ras(), atol=1e-9)
    back = image_from_volume_node(node)
    np.testing.assert_array_equal(back.array, oblique_image.array)
    np.testing.assert_allclose(back.index_to_lps(), oblique_image.index_to_lps(), atol=1e-9)


def test_kji_order_matches_slicer(scene, oblique_image):
    """arrayFromVolume is (k, j, i): voxel (i=2, j=1, k=3) is at RAS = IJKToRAS @ (2, 1, 3)."""
    node = volume_node_from_image(scene, oblique_image, "oblique")
    image_data = node.GetImageData()
    assert image_data.GetScalarComponentAsDouble(2, 1, 3, 0) == oblique_image.array[3, 1, 2]
    ras = oblique_image.index_to_ras() @ np.array([2, 1, 3, 1.0])
    lps = oblique_image.index_to_lps() @ np.array([2, 1, 3, 1.0])
    np.testing.assert_allclose(ras[:3], lps[:3] * [-1, -1, 1])


def test_file_written_by_slicer_reads_with_same_geometry(headless, oblique_image, tmp_path):
    node = volume_node_from_image(headless.scene, oblique_image, "oblique")
    headless.save_node(node, str(tmp_path / "slicer.nrrd"))
    image = read_image(tmp_path / "slicer.nrrd")
    np.testing.assert_array_equal(image.array, oblique_image.array)
    np.testing.assert_allclose(image.index_to_lps(), oblique_image.index_to_lps(), atol=1e-5)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_file_written_by_engine_loads_in_slicer_with_same_geometry(headless, oblique_image, tmp_path, suffix):
    path = write_image(oblique_image, tmp_path / f"engine{suffix}")
    node = headless.load_volume(str(path))
    np.testing.assert_allclose(_matrix(node), oblique_image.index_to_ras(), atol=1e-4)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), oblique_image.array)


def _under_linear_transform(scene, node, row: int, column: int, value: float) -> None:
    """Put `node` under a linear transform: the identity with one element set."""
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(row, column, value)
    transform.SetMatrixTransformToParent(matrix)
    node.SetAndObserveTransformNodeID(transform.GetID())


def test_linear_parent_transform_is_applied(scene, oblique_image):
    node = volume_node_from_image(scene, oblique_image, "moved")
    _under_linear_transform(scene, node, 0, 3, 10.0)  # a shift
    expected = oblique_image.index_to_ras()
    expected[0, 3] += 10.0
    np.testing.assert_allclose(world_ijk_to_ras(node), expected, atol=1e-9)
    np.testing.assert_allclose(image_from_volume_node(node).index_to_ras(), expected, atol=1e-9)


def test_non_linear_parent_transform_is_refused(scene, oblique_image):
    node = volume_node_from_image(scene, oblique_image, "warped")
    grid = scene.AddNewNodeByClass("vtkMRMLGridTransformNode")
    node.SetAndObserveTransformNodeID(grid.GetID())
    with pytest.raises(InputError, match="non-linear transform"):
        image_from_volume_node(node)


def test_shearing_parent_transform_is_refused(scene, oblique_image):
    """A shear composed into IJKToRAS would be coerced to a rotation, moving results off the volume's voxels."""
    node = volume_node_from_image(scene, oblique_image, "sheared")
    _under_linear_transform(scene, node, 0, 1, 0.4)  # a shear
    with pytest.raises(InputError, match="sheared"):
        image_from_volume_node(node)


def test_reading_does_not_change_the_node(scene, oblique_image):
    node = volume_node_from_image(scene, oblique_image, "kept")
    modified = node.GetMTime()
    image = image_from_volume_node(node)
    image.array[...] = -1  # the engine got a copy
    assert node.GetMTime() == modified
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), oblique_image.array)


def test_empty_node_is_refused(scene):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(InputError, match="no image data"):
        image_from_volume_node(node)
