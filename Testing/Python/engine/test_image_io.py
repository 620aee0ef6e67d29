"""Files <-> engine images: geometry kept exactly, bad input refused clearly, writes all-or-nothing."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from meddl.errors import InputError, OutputError
from meddl.image import Image, check_volume, image_from_index_to_ras
from meddl.io import image_from_sitk, read_image, write_image
from meddl_testing import write_dicom_series


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_round_trip_keeps_voxels_and_geometry(tmp_path, oblique_image, suffix):
    path = write_image(oblique_image, tmp_path / f"image{suffix}")
    back = read_image(path)
    np.testing.assert_array_equal(back.array, oblique_image.array)
    np.testing.assert_allclose(back.index_to_lps(), oblique_image.index_to_lps(), atol=1e-5)


def test_nifti_world_matrix_is_ras(tmp_path, oblique_image):
    """NIfTI stores RAS: nibabel's affine must equal our IJK-to-RAS matrix."""
    path = write_image(oblique_image, tmp_path / "image.nii.gz")
    np.testing.assert_allclose(nib.load(str(path)).affine, oblique_image.index_to_ras(), atol=1e-4)
    # and the voxel order: nibabel indexes (i, j, k), the engine (k, j, i)
    np.testing.assert_array_equal(np.asarray(nib.load(str(path)).dataobj).transpose(2, 1, 0), oblique_image.array)


def test_index_to_ras_inverts(oblique_image):
    rebuilt = image_from_index_to_ras(oblique_image.array, oblique_image.index_to_ras())
    np.testing.assert_allclose(rebuilt.index_to_lps(), oblique_image.index_to_lps(), atol=1e-9)


def test_dicom_folder(tmp_path, oblique_image):
    """A DICOM series written slice by slice reads back as one volume with its geometry."""
    write_dicom_series(oblique_image, tmp_path)
    image = read_image(tmp_path)
    np.testing.assert_array_equal(image.array, oblique_image.array.astype(np.int16))
    np.testing.assert_allclose(image.index_to_lps(), oblique_image.index_to_lps(), atol=1e-3)


def test_missing_input():
    with pytest.raises(InputError, match="input not found"):
        read_image("/nonexistent/volume.nii.gz")


def test_folder_without_dicom(tmp_path):
    with pytest.raises(InputError, match="no DICOM series"):
        read_image(tmp_path)


def test_unreadable_file(tmp_path):
    path = tmp_path / "broken.nii.gz"
    path.write_bytes(b"this is not an image")
    with pytest.raises(InputError, match="cannot read image"):
        read_image(path)


@pytest.mark.parametrize("shape", [(8, 9), (3, 4, 5, 6)])
def test_not_3d_is_refused(tmp_path, shape):
    path = tmp_path / "image.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), np.eye(4)), str(path))
    with pytest.raises(InputError, match="3D volume is needed"):
        read_image(path)


def test_2d_sitk_is_refused():
    with pytest.raises(InputError, match="2D"):
        image_from_sitk(sitk.Image(4, 5, sitk.sitkFloat32))


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((0, 4, 4), np.float32), "empty"),
        (np.full((4, 4, 4), np.nan, np.float32), "all NaN or Inf"),
        (np.full((4, 4, 4), np.inf, np.float32), "all NaN or Inf"),
        (np.zeros((4, 4), np.float32), "must be a 3D volume"),
    ],
)
def test_check_volume_refuses(array, message):
    with pytest.raises(InputError, match=message):
        check_volume(Image(array))


def test_wrong_channel_count():
    with pytest.raises(InputError, match="2 channel"):
        check_volume(Image(np.zeros((4, 4, 4, 2), np.float32)), channels=1)


def test_write_to_missing_folder_leaves_nothing(tmp_path, oblique_image):
    target = tmp_path / "missing" / "out.nii.gz"
    with pytest.raises(OutputError, match="does not exist"):
        write_image(oblique_image, target)
    assert not target.parent.exists()


def test_unwritable_location_fails_for_root_too_and_leaves_nothing(tmp_path, oblique_image):
    """A parent that is a regular file cannot hold files, whatever the user's permissions."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        write_image(oblique_image, blocker / "out.nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-folder"] and blocker.read_text() == "x"


def test_failed_write_removes_temporary(tmp_path, oblique_image, monkeypatch):
    def fail(*args, **kwargs):
        Path(args[1]).write_bytes(b"half")  # the writer dies after writing part of the file
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", fail)
    with pytest.raises(OutputError, match="disk full"):
        write_image(oblique_image, tmp_path / "out.nrrd")
    assert list(tmp_path.iterdir()) == []
