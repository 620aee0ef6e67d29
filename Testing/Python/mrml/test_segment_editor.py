"""The MedDL Segment Editor effect's logic on slicer-core's own segment editor classes (issue 17):
vtkMRMLSegmentEditorNode's masking settings and vtkSlicerSegmentEditorLogic's undo, not copies of them."""

from __future__ import annotations

import numpy as np
import pytest
import slicer
from meddl.errors import InputError
from meddl.image import Image
from meddl_testing import band_volume, mni_tissue_volume, oblique_direction, write_band_model
from MedDLLib.jobs import JobFailed, JobState
from MedDLLib.segment_editor import (
    PREVIEW_ATTRIBUTE,
    FillSession,
    ModelJob,
    Preview,
    apply_preview,
    discard_preview,
    editor_logic,
)
from MedDLLib.segmentation_job import SegmentationJob
from MedDLLib.segmentations import apply_label_map, label_map_from_segment_ids
from MedDLLib.volumes import volume_node_from_image

SEGMENTS = [{"value": 1, "name": "grey", "color": (0.8, 0.6, 0.5)}, {"value": 2, "name": "white", "color": (1, 1, 1)}]
EVERY = 6  # painted: every 6th axial slice


class Editor:
    """A source volume (MNI T1, 2 mm, axial slices 30-65), a segmentation with grey and white matter painted on
    every 6th slice, a segment editor node and Slicer's segment editor logic on them."""

    def __init__(self, scene, mni) -> None:
        image, labels = mni_tissue_volume(mni)
        rest = image.shape[1:]
        self.image, self.labels = image.crop((30, 0, 0), (66, *rest)), labels.crop((30, 0, 0), (66, *rest))
        self.volume = volume_node_from_image(scene, self.image, "T1")
        painted = np.zeros_like(self.labels.array)
        self.drawn = np.arange(0, painted.shape[0], EVERY)
        painted[self.drawn] = self.labels.array[self.drawn]
        self.node = apply_label_map(scene, self.labels.with_array(painted), SEGMENTS, self.volume, None, "Tissue")
        segmentation = self.node.GetSegmentation()
        self.ids = [segmentation.GetSegmentIdBySegmentName(item["name"]) for item in SEGMENTS]
        self.editor_node = scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
        self.logic = editor_logic(self.editor_node, self.node, self.volume)

    def array(self) -> np.ndarray:
        return label_map_from_segment_ids(self.node, self.volume, self.ids)

    def segment(self, segment_id: str) -> np.ndarray:
        return label_map_from_segment_ids(self.node, self.volume, [segment_id])


@pytest.fixture
def editor(scene, mni) -> Editor:
    return Editor(scene, mni)


def _fill(editor: Editor, session: FillSession, steps: int = 20) -> Preview:
    job = session.start(editor.node, editor.ids, editor.volume, "cpu", steps=steps)
    assert job.wait(300) is JobState.SUCCEEDED, job.engine.error
    return job.finish()


def test_a_fill_previews_then_applies_in_one_undo_step_keeping_the_painted_slices(editor, scene):
    before, count = editor.array(), scene.GetNumberOfNodes()
    session = FillSession()
    preview = _fill(editor, session)
    assert preview.node.GetAttribute(PREVIEW_ATTRIBUTE) == "1" and scene.GetNumberOfNodes() > count
    assert np.array_equal(editor.array(), before)  # only the preview until Apply
    apply_preview(preview, editor.logic)
    after = editor.array()
    assert preview.node.GetScene() is None
    assert np.array_equal(after[editor.drawn], before[editor.drawn])
    between = np.setdiff1d(np.arange(editor.drawn[-1]), editor.drawn)
    assert (after[between] == 1).sum() > 0 and (after[between] == 2).sum() > 0
    editor.logic.Undo()
    assert np.array_equal(editor.array(), before)
    session.close()


def test_a_second_round_starts_from_the_first(editor):
    session = FillSession()
    discard_preview(_fill(editor, session))
    first_state = session.state
    job = session.start(editor.node, editor.ids, editor.volume, "cpu", steps=20)
    assert job.warm_start and job.wait(300) is JobState.SUCCEEDED, job.engine.error
    discard_preview(job.finish())
    assert session.state != first_state and session.state.is_file() and not first_state.exists()
    folder = session.folder
    session.close()
    assert not folder.exists()


def _preview_everywhere(editor: Editor, value_segment: str) -> Preview:
    """A preview (no job) that sets `value_segment` on every voxel."""
    labels = editor.image.with_array(np.ones(editor.image.shape, np.uint8))
    node = apply_label_map(editor.node.GetScene(), labels, SEGMENTS[:1], editor.volume, None, "preview")
    return Preview(node, labels, {1: value_segment})


def test_the_editable_intensity_range_is_honoured(editor):
    other_before = editor.segment(editor.ids[1])
    editor.editor_node.SetSourceVolumeIntensityMask(True)
    low, high = np.percentile(editor.image.array, [60, 100])
    editor.editor_node.SetSourceVolumeIntensityMaskRange(float(low), float(high))
    editor.editor_node.SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteNone)
    apply_preview(_preview_everywhere(editor, editor.ids[0]), editor.logic)
    grey = editor.segment(editor.ids[0]) > 0
    outside = (editor.image.array < low) | (editor.image.array > high)
    assert not grey[outside & ~_painted(editor, 1)].any() and grey[~outside].all()
    assert np.array_equal(editor.segment(editor.ids[1]), other_before)  # OverwriteNone keeps white matter


def _painted(editor: Editor, value: int) -> np.ndarray:
    painted = np.zeros(editor.image.shape, bool)
    painted[editor.drawn] = editor.labels.array[editor.drawn] == value
    return painted


def test_the_editable_area_and_overwriting_other_segments_are_honoured(editor):
    segmentation = editor.node.GetSegmentation()
    area = np.zeros(editor.image.shape, np.uint8)
    area[:, 20:60, 20:60] = 1
    apply_label_map(editor.node.GetScene(), editor.image.with_array(area),
                    [{"value": 1, "name": "area", "color": (0, 1, 0)}], editor.volume, editor.node)
    area_id = segmentation.GetSegmentIdBySegmentName("area")
    editor.editor_node.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedInsideSingleSegment)
    editor.editor_node.SetMaskSegmentID(area_id)
    editor.editor_node.SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteAllSegments)
    white_before = editor.segment(editor.ids[1]) > 0
    apply_preview(_preview_everywhere(editor, editor.ids[0]), editor.logic)
    grey, white = editor.segment(editor.ids[0]) > 0, editor.segment(editor.ids[1]) > 0
    assert grey[area > 0].all() and not grey[(area == 0) & ~_painted(editor, 1)].any()
    assert not white[area > 0].any() and np.array_equal(white[area == 0], white_before[area == 0])


def test_an_empty_segment_or_a_single_painted_slice_is_refused_and_nothing_changes(editor, scene):
    segmentation = editor.node.GetSegmentation()
    empty = segmentation.AddEmptySegment("", "empty", [0, 0, 1])
    count, before = scene.GetNumberOfNodes(), editor.array()
    session = FillSession()
    with pytest.raises(InputError, match="empty are empty: paint each on a few slices"):
        session.start(editor.node, [editor.ids[0], empty], editor.volume, "cpu")
    one = np.zeros(editor.image.shape, np.uint8)
    one[12] = editor.labels.array[12] == 1
    apply_label_map(scene, editor.image.with_array(one), [{"value": 1, "name": "one", "color": (1, 0, 0)}],
                    editor.volume, editor.node)
    count = scene.GetNumberOfNodes()
    with pytest.raises(InputError, match="only one slice is painted"):
        session.start(editor.node, [segmentation.GetSegmentIdBySegmentName("one")], editor.volume, "cpu")
    assert scene.GetNumberOfNodes() == count and np.array_equal(editor.array(), before)
    session.close()


def test_cancelling_a_fill_while_it_trains_changes_nothing(editor, scene):
    count, before = scene.GetNumberOfNodes(), editor.array()
    session = FillSession()
    job = session.start(editor.node, editor.ids, editor.volume, "cpu", steps=5000)
    while job.state is JobState.RUNNING and "training" not in job.message:
        job.wait(0.5)
    assert "training" in job.message, job.message
    job.cancel()
    with pytest.raises(JobFailed, match="cancelled"):
        job.finish()
    assert scene.GetNumberOfNodes() == count and np.array_equal(editor.array(), before)
    assert session.state is None and not job.folder.exists()
    session.close()


@pytest.fixture
def band(scene):
    image = Image(band_volume(), (0.9, 1.4, 2.2), (40.0, -12.0, 8.0), oblique_direction(0.35))
    volume = volume_node_from_image(scene, image, "input")
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Editor segmentation")
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    editor_node = scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    return image, volume, node, editor_logic(editor_node, node, volume)


def test_a_model_writes_the_same_voxels_as_the_segmentation_module(band, scene, tmp_path):
    _, volume, node, logic = band
    model = str(write_band_model(tmp_path, labels=3))
    module_job = SegmentationJob(scene, volume, model, "cpu")
    assert module_job.wait(120) is JobState.SUCCEEDED, module_job.engine.error
    module_node = module_job.finish()
    module_segmentation = module_node.GetSegmentation()
    expected = {name: label_map_from_segment_ids(module_node, volume, [module_segmentation.GetSegmentIdBySegmentName(
        name)]) for name in ("Liver", "Spleen", "Kidney")}
    job = ModelJob(node, volume, model, "cpu")
    assert job.wait(120) is JobState.SUCCEEDED, job.engine.error
    written = apply_preview(job.finish(), logic)
    segmentation = node.GetSegmentation()
    assert [segmentation.GetSegment(segment_id).GetName() for segment_id in written] == ["Liver", "Spleen", "Kidney"]
    for segment_id in written:
        name = segmentation.GetSegment(segment_id).GetName()
        assert np.array_equal(label_map_from_segment_ids(node, volume, [segment_id]), expected[name]), name
        assert expected[name].any()


def test_a_model_inside_a_roi_into_the_selected_segment(band, scene, tmp_path):
    image, volume, node, logic = band
    target = node.GetSegmentation().AddEmptySegment("", "target", [1, 0, 0])
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "ROI")
    centre = image.index_to_lps() @ np.array([8.0, 7.0, 6.0, 1.0])
    roi.SetCenter(-centre[0], -centre[1], centre[2])
    roi.SetSize(6.0, 6.0, 6.0)
    job = ModelJob(node, volume, str(write_band_model(tmp_path, labels=3)), "cpu", roi_node=roi, into_segment=target)
    assert job.wait(120) is JobState.SUCCEEDED, job.engine.error
    apply_preview(job.finish(), logic)
    written = label_map_from_segment_ids(node, volume, [target]) > 0
    assert written.any() and node.GetSegmentation().GetNumberOfSegments() == 1
    k, j, i = np.nonzero(written)
    ijk = np.stack([i, j, k, np.ones_like(i)]).astype(float)
    lps = image.index_to_lps() @ ijk
    assert (np.abs(lps[:3].T - centre[:3]).max(axis=1) <= 3.0 + 1e-6).all()  # voxel centres inside the ROI
