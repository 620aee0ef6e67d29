"""Label maps -> segmentation nodes: names, colours, terminology, geometry, .seg.nrrd, hierarchy."""

from __future__ import annotations

import numpy as np
import pytest
import slicer
from meddl.image import Image
from meddl_testing import band_volume, oblique_direction
from MedDLLib.segmentations import apply_label_map, label_map_from_segmentation, terminology_tag
from MedDLLib.volumes import volume_node_from_image

LABELS = [
    {"value": 1, "name": "Liver", "color": (0.86, 0.55, 0.39),
     "terminology": {"category": {"scheme": "SCT", "code": "123037004", "meaning": "Anatomical Structure"},
                     "type": {"scheme": "SCT", "code": "10200004", "meaning": "Liver"}}},
    {"value": 2, "name": "Spleen", "color": (0.62, 0.42, 0.54), "terminology": None},
    {"value": 3, "name": "Kidney", "color": (0.73, 0.48, 0.35), "terminology": None},
]


@pytest.fixture
def label_image() -> Image:
    return Image(band_volume().astype(np.uint8), (0.8, 1.1, 2.5), (-20.0, 14.0, 3.0), oblique_direction(0.4))


@pytest.fixture
def reference(scene, label_image):
    return volume_node_from_image(scene, label_image.with_array(label_image.array.astype(np.float32)), "CT")


def _names(node) -> list[str]:
    segmentation = node.GetSegmentation()
    return [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]


def test_one_named_coloured_segment_per_label(scene, label_image, reference):
    node = apply_label_map(scene, label_image, LABELS, reference, name="result")
    assert _names(node) == ["Liver", "Spleen", "Kidney"]
    segmentation = node.GetSegmentation()
    for index, label in enumerate(LABELS):
        assert segmentation.GetNthSegment(index).GetColor() == pytest.approx(label["color"])
    tag = segmentation.GetNthSegment(0).GetTerminology()
    assert tag == terminology_tag(LABELS[0]["terminology"]) and "SCT^10200004^Liver" in tag
    assert node.GetDisplayNode() is not None


def test_segments_lie_exactly_on_the_label_voxels(scene, label_image, reference):
    node = apply_label_map(scene, label_image, LABELS, reference)
    count = scene.GetNumberOfNodes()
    exported = label_map_from_segmentation(node, reference, ["Liver", "Spleen", "Kidney"])
    np.testing.assert_array_equal(exported, label_image.array)
    assert scene.GetNumberOfNodes() == count  # reading the labels leaves no helper nodes behind


def test_replacing_segments_in_a_chosen_node_keeps_the_others(scene, label_image, reference):
    node = apply_label_map(scene, label_image, LABELS[:1], reference)
    node.GetSegmentation().AddEmptySegment("", "Manual notes")
    shifted = np.zeros_like(label_image.array)
    shifted[1:3, 1:3, 1:3] = 1
    same = apply_label_map(scene, label_image.with_array(shifted), LABELS[:1], reference, segmentation_node=node)
    assert same is node and sorted(_names(node)) == ["Liver", "Manual notes"]
    exported = label_map_from_segmentation(node, reference, ["Liver"])
    np.testing.assert_array_equal(exported, shifted)


def test_seg_nrrd_round_trip(headless, label_image, reference, tmp_path):
    node = apply_label_map(headless.scene, label_image, LABELS, reference)
    headless.save_node(node, str(tmp_path / "result.seg.nrrd"))
    loaded = headless.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "loaded")
    storage = headless.scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(tmp_path / "result.seg.nrrd"))
    assert storage.ReadData(loaded)
    assert _names(loaded) == ["Liver", "Spleen", "Kidney"]
    assert loaded.GetSegmentation().GetNthSegment(1).GetColor() == pytest.approx(LABELS[1]["color"], abs=1e-3)
    exported = label_map_from_segmentation(loaded, reference, ["Liver", "Spleen", "Kidney"])
    np.testing.assert_array_equal(exported, label_image.array)


def test_result_goes_under_the_inputs_study(scene, label_image, reference):
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    patient = hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "Patient")
    study = hierarchy.CreateStudyItem(patient, "Study")
    reference_item = hierarchy.GetItemByDataNode(reference) or hierarchy.CreateItem(study, reference)
    hierarchy.SetItemParent(reference_item, study)
    node = apply_label_map(scene, label_image, LABELS, reference)
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node)) == study


def test_bad_label_table_leaves_scene_unchanged(scene, label_image, reference):
    count = scene.GetNumberOfNodes()
    with pytest.raises(KeyError):
        apply_label_map(scene, label_image, [{"name": "no value"}], reference)
    assert scene.GetNumberOfNodes() == count
