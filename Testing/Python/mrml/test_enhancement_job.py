"""Volume node -> worker -> enhanced volume node: a new node on the exact grid, the input kept, nothing on failure."""

from __future__ import annotations

import numpy as np
import pytest
import slicer
from meddl.errors import InputError
from meddl.image import Image
from meddl_testing import oblique_direction, rician
from MedDLLib.enhancement_job import EnhancementJob
from MedDLLib.jobs import JobFailed, JobState
from MedDLLib.volumes import image_from_volume_node, volume_node_from_image


@pytest.fixture
def volume(scene, mni):
    from meddl.io import read_image

    clean = read_image(mni["t1"]).array.astype(np.float32)[70:102, 80:120, 70:110]
    image = Image(rician(clean, 0.05), (0.9, 0.9, 3.6), (12.0, -40.0, 7.5), oblique_direction(0.4))
    node = volume_node_from_image(scene, image, "noisy T1")
    node.GetDisplayNode().SetAutoWindowLevel(False)
    node.GetDisplayNode().SetWindowLevel(180.0, 95.0)
    return node


def test_denoised_volume_is_a_new_node_on_the_input_grid_with_its_settings(scene, volume):
    before = slicer.util.arrayFromVolume(volume).copy()
    job = EnhancementJob(scene, volume, "denoise", device="cpu", steps=30)
    assert job.wait(180) is JobState.SUCCEEDED, job.engine.error
    node = job.finish()
    assert node is not volume and node.GetName() == "noisy T1 denoised"
    result, source = image_from_volume_node(node), image_from_volume_node(volume)
    np.testing.assert_allclose(result.index_to_ras(), source.index_to_ras(), atol=1e-9)
    assert node.GetDisplayNode().GetWindow() == 180.0 and node.GetDisplayNode().GetLevel() == 95.0
    assert node.GetAttribute("MedDL.task") == "denoise" and node.GetAttribute("MedDL.method") == "network"
    assert node.GetAttribute("MedDL.steps") == "30" and node.GetAttribute("MedDL.source") == "noisy T1"
    assert node.GetAttribute("MedDL.wiener_passes") == "1" and node.GetAttribute("MedDL.noise") == "auto"
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), before)
    assert not job.folder.exists()


def test_the_panels_fast_denoising_trains_no_network_and_passes_the_noise_model(scene, volume):
    job = EnhancementJob(scene, volume, "denoise", device="cpu", steps=0, noise="gaussian")
    assert job.wait(120) is JobState.SUCCEEDED, job.engine.error
    node = job.finish()
    assert node.GetAttribute("MedDL.steps") == "0" and node.GetAttribute("MedDL.noise") == "gaussian"
    result, noisy = slicer.util.arrayFromVolume(node), slicer.util.arrayFromVolume(volume)
    assert result.shape == noisy.shape and float(np.abs(np.diff(result, axis=2)).mean()) < 0.8 * float(
        np.abs(np.diff(noisy, axis=2)).mean())  # smoother along rows than the noisy input


def test_super_resolved_volume_has_the_finer_spacing_and_the_same_first_slice(scene, volume):
    job = EnhancementJob(scene, volume, "superres", device="cpu", steps=20)
    assert job.wait(180) is JobState.SUCCEEDED, job.engine.error
    result, source = image_from_volume_node(job.finish()), image_from_volume_node(volume)
    assert result.shape[0] == (source.shape[0] - 1) * 4 + 1
    np.testing.assert_allclose(result.spacing, (0.9, 0.9, 0.9))
    np.testing.assert_allclose(result.index_to_ras() @ [3, 4, 8, 1], source.index_to_ras() @ [3, 4, 2, 1], atol=1e-6)


def test_cancelled_and_failed_jobs_leave_the_scene_as_it_was(scene, volume):
    count = scene.GetNumberOfNodes()
    job = EnhancementJob(scene, volume, "denoise", device="cpu")
    job.cancel()
    assert job.state is JobState.CANCELLED and scene.GetNumberOfNodes() == count and not job.folder.exists()
    flat = volume_node_from_image(scene, Image(np.ones((6, 6, 6), np.float32)), "flat")
    count = scene.GetNumberOfNodes()
    failing = EnhancementJob(scene, flat, "denoise", device="cpu")
    assert failing.wait(120) is JobState.FAILED
    with pytest.raises(JobFailed, match="constant"):
        failing.finish()
    assert scene.GetNumberOfNodes() == count


def test_the_input_can_never_be_the_output(scene, volume):
    with pytest.raises(InputError, match="must not be the input"):
        EnhancementJob(scene, volume, "denoise", output_volume=volume)
    with pytest.raises(InputError, match="task must be"):
        EnhancementJob(scene, volume, "sharpen")
