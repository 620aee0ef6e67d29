"""Volume node -> background worker -> segmentation node: exact, multi-label, and nothing lost on failure."""

from __future__ import annotations

import numpy as np
import pytest
import slicer
import vtk
from meddl.errors import InputError
from meddl.image import Image
from meddl_testing import band_volume, oblique_direction, write_band_model
from MedDLLib.jobs import JobFailed, JobState
from MedDLLib.segmentation_job import SegmentationJob
from MedDLLib.segmentations import label_map_from_segmentation
from MedDLLib.volumes import volume_node_from_image


@pytest.fixture
def volume(scene):
    image = Image(band_volume(), (0.9, 1.4, 2.2), (40.0, -12.0, 8.0), oblique_direction(0.35))
    return volume_node_from_image(scene, image, "input")


def _ijk_to_ras(node) -> list[float]:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return [matrix.GetElement(r, c) for r in range(4) for c in range(4)]


def test_multi_label_model_gives_one_named_segment_per_label_on_the_input_grid(scene, volume, tmp_path):
    model = write_band_model(tmp_path, labels=3)
    before_array, before_matrix = slicer.util.arrayFromVolume(volume).copy(), _ijk_to_ras(volume)
    job = SegmentationJob(scene, volume, str(model), "cpu")
    assert job.wait(120) is JobState.SUCCEEDED, job.engine.error
    node = job.finish()
    segmentation = node.GetSegmentation()
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    assert names == ["Liver", "Spleen", "Kidney"]
    assert segmentation.GetNthSegment(0).GetColor() == pytest.approx((0xDC / 255, 0x8C / 255, 0x64 / 255))
    assert "SCT^10200004^Liver" in segmentation.GetNthSegment(0).GetTerminology()
    exported = label_map_from_segmentation(node, volume, names)
    np.testing.assert_array_equal(exported, band_volume().astype(exported.dtype))
    # the input node is untouched and the private folder is gone
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), before_array)
    assert _ijk_to_ras(volume) == before_matrix
    assert not job.folder.exists()


def test_failed_job_leaves_scene_unchanged(scene, volume, tmp_path):
    model = write_band_model(tmp_path)
    model.write_bytes(b"corrupt")
    count = scene.GetNumberOfNodes()
    job = SegmentationJob(scene, volume, str(model), "cpu")
    assert job.wait(120) is JobState.FAILED
    with pytest.raises(JobFailed, match="corrupt"):
        job.finish()
    assert scene.GetNumberOfNodes() == count and not job.folder.exists()


def test_cancelled_job_leaves_scene_unchanged(headless, mni):
    volume = headless.load_volume(str(mni["t1"]), "T1")
    count = headless.scene.GetNumberOfNodes()
    job = SegmentationJob(headless.scene, volume, "deepbet-brain-extraction", "cpu")
    job.cancel()
    assert job.state is JobState.CANCELLED
    with pytest.raises(JobFailed, match="cancelled"):
        job.finish()
    assert headless.scene.GetNumberOfNodes() == count and not job.folder.exists()


def test_bad_input_is_refused_before_any_work(scene, tmp_path):
    image = Image(np.full((4, 5, 6), np.nan, np.float32))
    volume = volume_node_from_image(scene, image, "nan")
    count = scene.GetNumberOfNodes()
    with pytest.raises(InputError, match="all NaN"):
        SegmentationJob(scene, volume, str(write_band_model(tmp_path)), "cpu")
    assert scene.GetNumberOfNodes() == count


def test_replaces_segments_in_the_chosen_output(scene, volume, tmp_path):
    model = str(write_band_model(tmp_path, labels=2))
    output = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    output.GetSegmentation().AddEmptySegment("", "Spleen")
    output.GetSegmentation().AddEmptySegment("", "Tumour")
    job = SegmentationJob(scene, volume, model, "cpu", output_segmentation=output)
    job.wait(120)
    assert job.finish() is output
    segmentation = output.GetSegmentation()
    names = sorted(segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments()))
    assert names == ["Liver", "Spleen", "Tumour"]


def test_real_brain_extraction_through_the_worker(headless, mni):
    volume = headless.load_volume(str(mni["t1"]), "T1")
    job = SegmentationJob(headless.scene, volume, None, "cpu")  # None: the default model
    assert job.wait(300) is JobState.SUCCEEDED, job.engine.error
    node = job.finish()
    brain = label_map_from_segmentation(node, volume, ["Brain"])
    assert 1.5e6 < int(brain.sum()) < 2.5e6  # about 1.95 million 1 mm voxels: an adult brain


def test_waiting_past_the_timeout_cancels_and_leaves_the_scene_unchanged(scene, volume, tmp_path):
    from MedDLLib.jobs import finish_within

    count = scene.GetNumberOfNodes()
    job = SegmentationJob(scene, volume, str(write_band_model(tmp_path)), "cpu")
    with pytest.raises(TimeoutError, match="segmentation did not finish in 0.001 s"):
        finish_within(job, 0.001, "segmentation")
    assert job.state is JobState.CANCELLED and scene.GetNumberOfNodes() == count and not job.folder.exists()


def test_a_two_channel_nnunet_model_segments_volume_nodes_as_the_engine_does(scene):
    """The Segmentation panel's path for a multi-channel nnU-Net folder: both channels as volume nodes, the
    second resampled onto the first's grid, the same labels as the engine gives on the files."""
    nnunet_folders = pytest.importorskip("nnunet_folders")
    from meddl.io import read_image, stack_channels_onto
    from meddl.segmentation.predict import segment

    results = nnunet_folders.make_results_folder(None, "two-channel")
    files = nnunet_folders.raw_cases(results)[nnunet_folders.training_case(results)]
    images = [read_image(path) for path in files]
    nodes = [volume_node_from_image(scene, image, f"channel {index}") for index, image in enumerate(images)]
    job = SegmentationJob(scene, nodes[0], str(results), "cpu", more_volumes=nodes[1:], fast=True)
    assert job.wait(300) is JobState.SUCCEEDED, job.engine.error
    node = job.finish()
    names = [node.GetSegmentation().GetNthSegment(i).GetName()
             for i in range(node.GetSegmentation().GetNumberOfSegments())]
    assert names == ["grey matter", "white matter"]
    expected = segment(stack_channels_onto(images[0], images[1:]), results, "cpu", fast=True).labels.array
    exported = label_map_from_segmentation(node, nodes[0], names)
    np.testing.assert_array_equal(exported, expected.astype(exported.dtype))
