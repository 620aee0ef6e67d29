"""Registration in the scene: the grid transform means what the engine means, and the job adds all or nothing."""

from __future__ import annotations

import numpy as np
import pytest
import slicer
import torch
from meddl.image import Image
from meddl.registration.fields import lps_points, sample, warp
from meddl_testing import mni_tissue_volume, oblique_direction, smooth_random_field
from MedDLLib.jobs import JobFailed, JobState
from MedDLLib.registration_job import RegistrationJob
from MedDLLib.segmentations import apply_label_map, label_map_from_segmentation
from MedDLLib.transforms import grid_transform_node, harden_through
from MedDLLib.volumes import image_from_volume_node, volume_node_from_image

TISSUES = [{"value": 1, "name": "grey matter", "color": (0.6, 0.6, 0.6), "terminology": None},
           {"value": 2, "name": "white matter", "color": (1.0, 1.0, 0.9), "terminology": None}]


@pytest.fixture(scope="module")
def oblique_pair(mni):
    image, labels = mni_tissue_volume(mni)
    box = (slice(20, 60), slice(30, 78), slice(25, 65))
    geometry = ((1.3, 0.8, 2.1), (-20.0, 31.0, 12.5), oblique_direction(0.35))
    return Image(image.array[box].copy(), *geometry), Image(labels.array[box].copy(), *geometry)


def test_hardening_through_the_grid_transform_node_equals_the_engine_warp(scene, oblique_pair):
    image, _ = oblique_pair
    field = smooth_random_field(image, 3.0, seed=2)
    moving = volume_node_from_image(scene, image, "moving")
    harden_through(moving, grid_transform_node(scene, field, image, "field"))
    hardened = image_from_volume_node(moving)  # Slicer grows the grid to hold the warped volume
    points = lps_points(hardened)
    field_there = sample(torch.from_numpy(np.moveaxis(field, -1, 0).copy()), image, points).permute(1, 2, 3, 0)
    engine = warp(image, hardened, field_there.numpy()).array  # the engine's warp onto Slicer's grid

    def within(lps, grid, margin):
        index = lps @ np.linalg.inv(grid.index_to_lps())[:3, :3].T + np.linalg.inv(grid.index_to_lps())[:3, 3]
        return np.all((index >= margin) & (index <= np.array(grid.shape[::-1]) - 1 - margin), axis=-1)

    inside = within(points.numpy(), image, 0.5) & within(points.numpy() + field_there.numpy(), image, 0.5)
    assert inside.sum() > 0.5 * image.array.size
    np.testing.assert_allclose(hardened.array[inside], engine[inside], atol=0.01 * float(image.array.max()))


def test_registration_job_adds_transform_volume_segmentation_and_table(scene, oblique_pair):
    image, labels = oblique_pair
    fixed = volume_node_from_image(scene, image, "fixed")
    deformation = smooth_random_field(image, 2.0, seed=4)
    moving_image = warp(image, image, deformation)
    moving = volume_node_from_image(scene, moving_image, "moving")
    segmentation = apply_label_map(scene, warp(labels, labels, deformation, labels=True), TISSUES, moving,
                                   name="moving tissues")
    before = slicer.util.arrayFromVolume(moving).copy()
    job = RegistrationJob(scene, fixed, moving, segmentation, device="cpu", iterations=20)
    assert job.wait(300) is JobState.SUCCEEDED, job.engine.error
    outputs = job.finish()
    assert outputs.transform.IsA("vtkMRMLGridTransformNode")
    assert image_from_volume_node(outputs.warped_volume).same_grid(image)
    carried = label_map_from_segmentation(outputs.warped_segmentation, fixed, ["grey matter", "white matter"])
    assert carried.shape == image.shape and set(np.unique(carried)) <= {0, 1, 2}
    figures = outputs.table.GetTable()
    assert figures.GetNumberOfRows() == 3
    assert figures.GetValue(1, 1).ToDouble() > figures.GetValue(0, 1).ToDouble()  # NCC after > before
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(moving), before)
    assert not job.folder.exists()


def test_cancelled_and_failed_registrations_add_nothing(scene, oblique_pair):
    image, _ = oblique_pair
    fixed = volume_node_from_image(scene, image, "fixed")
    moving = volume_node_from_image(scene, image, "moving")
    count = scene.GetNumberOfNodes()
    job = RegistrationJob(scene, fixed, moving, device="cpu")
    job.cancel()
    assert job.state is JobState.CANCELLED and scene.GetNumberOfNodes() == count
    flat = volume_node_from_image(scene, Image(np.ones((12, 12, 12), np.float32)), "flat")
    count = scene.GetNumberOfNodes()
    failing = RegistrationJob(scene, fixed, flat, device="cpu")
    assert failing.wait(120) is JobState.FAILED
    with pytest.raises(JobFailed, match="constant"):
        failing.finish()
    assert scene.GetNumberOfNodes() == count
