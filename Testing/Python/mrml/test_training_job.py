"""Training from scene pairs: few-shot from drawn slices, a live chart, the model in the library, cancel."""

from __future__ import annotations

import numpy as np
import pytest
import slicer
from meddl.errors import InputError, ModelError
from meddl.models import store
from meddl.segmentation.metrics import dice
from meddl_testing import mni_tissue_volume
from MedDLLib.jobs import JobFailed, JobState
from MedDLLib.model_library import library_rows
from MedDLLib.segmentation_job import SegmentationJob
from MedDLLib.segmentations import apply_label_map, label_map_from_segmentation
from MedDLLib.training_job import TrainingJob, segment_names
from MedDLLib.volumes import volume_node_from_image

TISSUES = [{"value": 1, "name": "grey matter", "color": (0.6, 0.6, 0.6), "terminology": None},
           {"value": 2, "name": "white matter", "color": (1.0, 1.0, 0.9), "terminology": None}]


@pytest.fixture(scope="module")
def tissue(mni):
    image, label = mni_tissue_volume(mni)
    spanned = np.flatnonzero(label.array.any(axis=(1, 2)))
    sparse = np.zeros_like(label.array)
    sparse[spanned[::10]] = label.array[spanned[::10]]
    return image, label, label.with_array(sparse), np.setdiff1d(spanned, spanned[::10])


@pytest.fixture
def drawn(scene, tissue):
    """A volume node and a segmentation node with the tissues drawn on every 10th axial slice."""
    image, _, sparse, _ = tissue
    volume = volume_node_from_image(scene, image, "MNI T1")
    return volume, apply_label_map(scene, sparse, TISSUES, volume, name="drawn slices")


def test_few_shot_from_drawn_slices_into_the_library_and_back_into_a_segmentation(scene, drawn, tissue):
    volume, segmentation = drawn
    before = slicer.util.arrayFromVolume(volume).copy()
    job = TrainingJob(scene, [drawn], "tissue-few-shot", epochs=10, device="cpu")
    assert job.wait(300) is JobState.SUCCEEDED, job.engine.error
    assert job.finish() == "tissue-few-shot"
    row, = [row for row in library_rows("segmentation", installed_only=True) if row.id == "tissue-few-shot"]
    assert row.origin == "trained"
    table = job.chart.table.GetTable()
    assert [table.GetValue(row, 0).ToDouble() for row in range(table.GetNumberOfRows())] == list(range(1, 11))
    assert job.chart.chart.GetNumberOfPlotSeriesNodes() == 2
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), before)

    segmenting = SegmentationJob(scene, volume, "tissue-few-shot", "cpu")
    assert segmenting.wait(120) is JobState.SUCCEEDED, segmenting.engine.error
    result = segmenting.finish()
    predicted = label_map_from_segmentation(result, volume, ["grey matter", "white matter"])
    _, truth, _, unlabelled = tissue
    for value in (1, 2):
        assert dice(predicted[unlabelled] == value, truth.array[unlabelled] == value) >= 0.8


def test_cancel_keeps_the_best_checkpoint_so_far(scene, drawn):
    job = TrainingJob(scene, [drawn], "stopped-early", epochs=500, device="cpu")
    while job.state is JobState.RUNNING and job.chart.table.GetNumberOfRows() < 2:
        job.wait(0.2)
    job.cancel()
    assert job.state is JobState.CANCELLED
    assert store.installed("stopped-early") is not None  # usable at once from the model selector
    assert "best checkpoint" in job.cancelled_message and job.chart.table.GetNumberOfRows() >= 2
    assert "weights of epoch" in (store.models_dir() / "stopped-early" / "configs" / "meddl_card.json").read_text()
    assert not job.folder.exists()


def test_cancel_before_the_first_checkpoint_leaves_scene_and_library_as_they_were(scene, drawn):
    count = scene.GetNumberOfNodes()
    job = TrainingJob(scene, [drawn], "never-saved", epochs=500, device="cpu")
    job.cancel()
    assert scene.GetNumberOfNodes() == count and store.installed("never-saved") is None
    assert "nothing was changed" in job.cancelled_message


def test_bad_training_input_is_refused(scene, drawn, tmp_path):
    volume, segmentation = drawn
    with pytest.raises(InputError, match="at least one training pair"):
        TrainingJob(scene, [], "none")
    empty = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "nothing drawn")
    with pytest.raises(InputError, match="no segments"):
        TrainingJob(scene, [(volume, empty)], "empty")
    (store.models_dir() / "taken").mkdir(parents=True)
    with pytest.raises(ModelError, match="already in the library"):
        TrainingJob(scene, [drawn], "taken")
    count = scene.GetNumberOfNodes()
    blank = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "blank segment")
    blank.GetSegmentation().AddEmptySegment("", "grey matter")
    job = TrainingJob(scene, [(volume, blank)], "blank", epochs=1, device="cpu")
    assert job.wait(120) is JobState.FAILED
    with pytest.raises(JobFailed, match="label map is empty"):
        job.finish()
    assert scene.GetNumberOfNodes() == count + 1  # only the test's own blank node


def test_segments_map_to_labels_by_name_across_pairs(scene):
    first = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    second = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    for node, names in ((first, ["Liver", "Spleen"]), (second, ["Kidney", "Liver"])):
        for name in names:
            node.GetSegmentation().AddEmptySegment("", name)
    assert segment_names([first, second]) == ["Liver", "Spleen", "Kidney"]
