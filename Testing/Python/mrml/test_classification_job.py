"""Volume nodes -> worker -> table node and saliency volumes; ROI limits; nothing added on failure or cancel."""

from __future__ import annotations

import json

import numpy as np
import pytest
import slicer
import vtk
from meddl.classification.predict import classify
from meddl.classification.training import network_spec
from meddl.errors import InputError
from meddl.image import Image
from meddl_testing import oblique_direction
from MedDLLib.classification_job import ClassificationJob
from MedDLLib.jobs import JobFailed, JobState
from MedDLLib.tables import rows_of_table_node
from MedDLLib.volumes import volume_node_from_image


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A small untrained 3D DenseNet with its card (plumbing, not accuracy, is tested here)."""
    import torch
    from meddl.models.networks import build_monai_network

    folder = tmp_path_factory.mktemp("classifier")
    network_def, layer = network_spec("densenet", 3, 1, 3)
    torch.manual_seed(0)
    torch.save(build_monai_network(network_def, "test").state_dict(), folder / "model.pt")
    card = {"name": "tissue", "task": "classification", "license": "MIT",
            "input": {"channels": 1, "spatial_dims": 3, "size": [16, 16, 16], "intensity": {"method": "zscore"}},
            "labels": [{"value": 0, "name": "grey"}, {"value": 1, "name": "white"}, {"value": 2, "name": "csf"}],
            "network": network_def, "saliency": {"target_layer": layer}}
    (folder / "model.json").write_text(json.dumps(card))
    return str(folder / "model.pt")


@pytest.fixture
def volumes(scene):
    rng = np.random.default_rng(0)
    return [volume_node_from_image(scene, Image(rng.random((18, 20, 22)).astype(np.float32) * 100, (0.9, 1.1, 1.7),
                                                (5.0, -3.0, 2.0), oblique_direction(0.2 * n)), f"case{n}")
            for n in range(2)]


def _matrix(node):
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def test_table_has_one_row_per_input_and_every_class(scene, volumes, classifier):
    before = [slicer.util.arrayFromVolume(v).copy() for v in volumes]
    job = ClassificationJob(scene, volumes, classifier, "cpu")
    assert job.wait(120) is JobState.SUCCEEDED, job.engine.error
    rows = rows_of_table_node(job.finish())
    assert [row["volume"] for row in rows] == ["case0", "case1"]
    assert set(rows[0]) == {"volume", "predicted", "p_grey", "p_white", "p_csf", "model"}
    for row in rows:
        assert row["p_grey"] + row["p_white"] + row["p_csf"] == pytest.approx(1.0, abs=1e-4)
        assert row["predicted"] == max(("grey", "white", "csf"), key=lambda c: row[f"p_{c}"])
    for volume, array in zip(volumes, before):
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), array)


def test_saliency_volume_lies_on_the_input_grid(scene, volumes, classifier):
    job = ClassificationJob(scene, volumes[:1], classifier, "cpu", with_saliency=True, saliency_class="white")
    job.wait(120)
    job.finish()
    heat = job.saliency_nodes[0]
    assert heat.GetName() == "case0 saliency"
    np.testing.assert_allclose(_matrix(heat), _matrix(volumes[0]), atol=1e-6)
    assert slicer.util.arrayFromVolume(heat).shape == slicer.util.arrayFromVolume(volumes[0]).shape


def test_roi_limits_what_the_model_sees(scene, volumes, classifier):
    from MedDLLib.volumes import image_from_volume_node

    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "roi")
    image = image_from_volume_node(volumes[0])
    centre = image.index_to_ras() @ np.array([11, 10, 9, 1.0])
    roi.SetXYZ(*centre[:3])
    roi.SetRadiusXYZ(4, 4, 4)
    job = ClassificationJob(scene, volumes[:1], classifier, "cpu", with_saliency=True, roi_node=roi)
    job.wait(120)
    rows = rows_of_table_node(job.finish())
    start, stop = job.boxes[0][1]
    expected = classify([image.crop(start, stop)], classifier, device="cpu")[0]
    assert rows[0]["p_grey"] == pytest.approx(expected.probabilities[0], abs=1e-5)
    heat = slicer.util.arrayFromVolume(job.saliency_nodes[0])
    outside = np.ones(heat.shape, bool)
    outside[tuple(slice(a, b) for a, b in zip(start, stop))] = False
    assert np.all(heat[outside] == 0) and 0 < np.prod(np.subtract(stop, start)) < heat.size


def test_roi_outside_the_volume_is_refused(scene, volumes, classifier):
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "far")
    roi.SetXYZ(1000, 1000, 1000)
    roi.SetRadiusXYZ(1, 1, 1)
    with pytest.raises(InputError, match="does not overlap"):
        ClassificationJob(scene, volumes, classifier, "cpu", roi_node=roi)


def test_failure_and_cancel_add_nothing(scene, volumes, classifier, tmp_path):
    count = scene.GetNumberOfNodes()
    failed = ClassificationJob(scene, volumes, "deepbet-brain-extraction", "cpu")
    assert failed.wait(120) is JobState.FAILED and "not a classification model" in failed.engine.error
    with pytest.raises(JobFailed):
        failed.finish()
    cancelled = ClassificationJob(scene, volumes, classifier, "cpu", with_saliency=True)
    cancelled.cancel()
    assert scene.GetNumberOfNodes() == count and not cancelled.folder.exists() and not failed.folder.exists()


def test_results_fill_a_chosen_table(scene, volumes, classifier):
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", "mine")
    job = ClassificationJob(scene, volumes[:1], classifier, "cpu", table_node=table)
    job.wait(120)
    assert job.finish() is table and table.GetNumberOfRows() == 1
