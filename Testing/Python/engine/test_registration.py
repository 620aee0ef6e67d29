"""Registration: the field's meaning in the engine and the ITK file, recovery of a known deformation, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from meddl.cli import main
from meddl.errors import InputError
from meddl.image import Image
from meddl.io import read_image, write_image
from meddl.registration.field_files import read_displacement_field, write_displacement_field
from meddl.registration.fields import folded_share, lps_points, warp
from meddl.registration.optimise import RegistrationSettings, register
from meddl.segmentation.metrics import dice
from meddl_testing import deformed_copy, mni_tissue_volume, oblique_direction, smooth_random_field

# Stated for a smooth random deformation (control vectors of 4 mm sd) of the 2 mm MNI T1, pyramid 1/4 and 1/2.
RECOVERED_DICE = 0.85  # each of grey and white matter, after registration (before: about 0.6)
RECOVERED_ERROR_MM = 1.5  # mean displacement error inside the brain (before: about 3.5 mm)


@pytest.fixture(scope="module")
def oblique(mni):
    """A crop of the 2 mm MNI T1 on an anisotropic, oblique grid with a non-zero origin."""
    image, _ = mni_tissue_volume(mni)
    return Image(image.array[20:60, 30:78, 25:65].copy(), (1.3, 0.8, 2.1), (-20.0, 31.0, 12.5),
                 oblique_direction(0.35))


def test_the_written_field_means_what_the_engine_means_to_itk(oblique, tmp_path):
    import SimpleITK as sitk

    field = smooth_random_field(oblique, 3.0, seed=2)
    engine = warp(oblique, oblique, field)
    write_displacement_field(field, oblique, tmp_path / "field.nii.gz")
    read, grid = read_displacement_field(tmp_path / "field.nii.gz")
    np.testing.assert_allclose(read, field, atol=1e-9)
    assert grid.same_grid(oblique)
    transform = sitk.DisplacementFieldTransform(sitk.ReadImage(str(tmp_path / "field.nii.gz"), sitk.sitkVectorFloat64))
    write_image(oblique, tmp_path / "moving.nrrd")
    moving = sitk.ReadImage(str(tmp_path / "moving.nrrd"), sitk.sitkFloat64)
    itk = sitk.GetArrayFromImage(sitk.Resample(moving, moving, transform, sitk.sitkLinear, 0.0))
    # compare where T(x) falls inside the moving grid (at its very border ITK and the engine pad differently)
    mapped = (lps_points(oblique).numpy() + field) @ np.linalg.inv(oblique.index_to_lps())[:3, :3].T \
        + np.linalg.inv(oblique.index_to_lps())[:3, 3]
    inside = np.all((mapped >= 0) & (mapped <= np.array(oblique.shape[::-1]) - 1), axis=-1)
    assert inside.mean() > 0.8
    np.testing.assert_allclose(engine.array[inside], itk[inside], atol=1e-3 * float(oblique.array.max()))


@pytest.fixture(scope="module")
def recovery(mni):
    image, labels = mni_tissue_volume(mni)
    moving, moving_labels, truth = deformed_copy(image, labels, 4.0, seed=0)
    before = (image.array.copy(), moving.array.copy())
    result = register(image, moving, RegistrationSettings(levels=(4, 2), device="cpu"))  # ~20 s
    assert (image.array == before[0]).all() and (moving.array == before[1]).all()  # inputs never change
    return image, labels, moving_labels, truth, result


def test_a_known_deformation_of_the_mni_t1_is_recovered(recovery):
    image, labels, moving_labels, truth, result = recovery
    brain = labels.array > 0
    carried = warp(moving_labels, image, result.displacement, labels=True).array
    for value in (1, 2):
        assert dice(carried == value, labels.array == value) >= RECOVERED_DICE
    assert np.linalg.norm(result.displacement - truth, axis=-1)[brain].mean() <= RECOVERED_ERROR_MM
    assert result.metrics["folded_share"] < 0.001


def test_affine_stage_recovers_a_rigid_motion(mni):
    """moving(T(x)) = fixed(x) for T(x) = R(x - c) + c + t: the affine result must be T."""
    fixed, _ = mni_tissue_volume(mni)
    angle, shift = np.deg2rad(6.0), np.array([3.0, -2.0, 1.5])
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    points = lps_points(fixed).numpy()
    centre = points.reshape(-1, 3).mean(axis=0)
    moving = warp(fixed, fixed, (points - centre - shift) @ rotation + centre - points)  # fixed at T^-1(y)
    truth = (points - centre) @ rotation.T + centre + shift - points
    result = register(fixed, moving, RegistrationSettings(method="affine", device="cpu"))
    core = tuple(slice(n // 4, n - n // 4) for n in fixed.shape)
    assert np.linalg.norm(result.displacement - truth, axis=-1)[core].mean() < 1.0
    np.testing.assert_allclose(result.affine[:3, :3], rotation, atol=0.02)


@pytest.mark.parametrize(("fixed", "moving", "message"), [
    (np.ones((10, 10, 10, 2), np.float32), None, "single-channel"),
    (np.zeros((0, 10, 10), np.float32), None, "empty"),
    (np.full((10, 10, 10), np.nan, np.float32), None, "finite|NaN"),
    (np.random.default_rng(0).random((1, 40, 40)).astype(np.float32), None, "2D image cannot be aligned"),
    (np.ones((10, 10, 10), np.float32), None, "constant"),
])
def test_bad_input_is_a_clear_error(fixed, moving, message):
    good = Image(np.random.default_rng(1).random((12, 12, 12)).astype(np.float32))
    with pytest.raises(InputError, match=message):
        register(Image(fixed), good if moving is None else Image(moving))


def test_command_line_writes_everything_or_nothing(oblique, tmp_path):
    moving = warp(oblique, oblique, smooth_random_field(oblique, 2.0, seed=5))
    write_image(oblique, tmp_path / "fixed.nii.gz")
    write_image(moving, tmp_path / "moving.nii.gz")
    labels = oblique.with_array((oblique.array > np.median(oblique.array)).astype(np.uint8))
    write_image(labels, tmp_path / "labels.nii.gz")
    assert main(["register", str(tmp_path / "fixed.nii.gz"), str(tmp_path / "moving.nii.gz"),
                 "--out-transform", str(tmp_path / "t.nii.gz"), "--out-warped", str(tmp_path / "w.nii.gz"),
                 "--moving-labels", str(tmp_path / "labels.nii.gz"), "--out-warped-labels", str(tmp_path / "wl.nii.gz"),
                 "--out-report", str(tmp_path / "r.json"), "--iterations", "10", "--progress", "none"]) == 0
    field, grid = read_displacement_field(tmp_path / "t.nii.gz")
    assert grid.same_grid(oblique) and folded_share(field, grid) < 0.001
    assert read_image(tmp_path / "wl.nii.gz").array.dtype == np.uint8
    flat = tmp_path / "flat.nii.gz"
    write_image(Image(np.ones((12, 12, 12), np.float32)), flat)
    assert main(["register", str(flat), str(tmp_path / "moving.nii.gz"), "--out-transform",
                 str(tmp_path / "never.nii.gz"), "--progress", "none"]) == 3
    assert not (tmp_path / "never.nii.gz").exists()


@pytest.fixture(scope="module")
def coarse(mni):
    """The MNI T1 and tissue labels at 4 mm, and a smoothly deformed copy (3 mm control vectors)."""
    image, labels = mni_tissue_volume(mni)

    def half(volume):
        return Image(np.ascontiguousarray(volume.array[::2, ::2, ::2]), tuple(2 * s for s in volume.spacing),
                     volume.origin, volume.direction)

    image, labels = half(image), half(labels)
    return image, labels, deformed_copy(image, labels, 3.0, seed=20)


def test_train_registration_writes_a_voxelmorph_model_that_registers_and_refines(coarse, tmp_path):
    """The learned path end to end on CPU: a few training steps only, so quality is the refinement's."""
    from meddl.models.loading import load_model

    image, labels, (moving, moving_labels, _) = coarse
    paths = []
    for index, volume in enumerate([image] + [deformed_copy(image, labels, 3.0, seed=s)[0] for s in (1, 2)]):
        paths.append(str(write_image(volume, tmp_path / f"train{index}.nii.gz")))
    assert main(["train-registration", "--images", *paths, "--out", str(tmp_path / "vm.pt"), "--steps", "5",
                 "--progress", "none"]) == 0
    model = load_model(tmp_path / "vm.pt")
    assert model.card.task == "registration" and model.card.network["class"] == "VoxelMorph"
    write_image(image, tmp_path / "fixed.nii.gz")
    write_image(moving, tmp_path / "moving.nii.gz")
    write_image(moving_labels, tmp_path / "labels.nii.gz")
    assert main(["register", str(tmp_path / "fixed.nii.gz"), str(tmp_path / "moving.nii.gz"), "--model",
                 str(tmp_path / "vm.pt"), "--refine", "--out-transform", str(tmp_path / "t.nii.gz"),
                 "--moving-labels", str(tmp_path / "labels.nii.gz"), "--out-warped-labels",
                 str(tmp_path / "carried.nii.gz"), "--progress", "none"]) == 0
    carried = read_image(tmp_path / "carried.nii.gz").array
    for value in (1, 2):
        assert dice(carried == value, labels.array == value) >= RECOVERED_DICE
    field, grid = read_displacement_field(tmp_path / "t.nii.gz")
    assert grid.same_grid(image) and folded_share(field, grid) < 0.001


def test_a_segmentation_model_is_not_a_registration_model(coarse, tmp_path):
    from meddl.errors import ModelError
    from meddl.models.loading import load_model
    from meddl.registration.learned import learned_register
    from meddl_testing import write_band_model

    image, _, (moving, _, _) = coarse
    with pytest.raises(ModelError, match="not a registration model"):
        learned_register(image, moving, load_model(write_band_model(tmp_path)))
