"""Promptable segmentation in the MedDL Segment Editor effect, on slicer-core's segment editor classes: prompts
run on the background worker with a random-weights nnInteractive model and update a preview of the selected
segment on an oblique, anisotropic source volume; undo, reset and seeding; Apply obeys the editor's masking in one
undo step; a failed or cancelled interaction changes nothing."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest
import slicer
from meddl.cli.interact import InteractResult
from meddl.errors import InputError
from meddl.image import Image
from meddl_testing import oblique_direction
from MedDLLib.interactive_segmentation import PromptSegmentation, describe_timing, model_licence
from MedDLLib.jobs import JobFailed, JobState
from MedDLLib.prompt_markups import prompts_from_markups
from MedDLLib.segment_editor import PREVIEW_ATTRIBUTE, editor_logic
from MedDLLib.segmentations import apply_label_map, label_map_from_segment_ids
from MedDLLib.volumes import volume_node_from_image

SHAPE = (24, 32, 32)
TIMEOUT = 240


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    pytest.importorskip("nnInteractive.inference.inference_session")
    import nninteractive_folders

    return str(nninteractive_folders.build(tmp_path_factory.mktemp("nninteractive") / "model"))


def _image() -> Image:
    """A bright block on noise, anisotropic and oblique."""
    array = np.random.default_rng(0).normal(100, 20, size=SHAPE).astype(np.float32)
    array[6:18, 8:24, 8:24] += 80
    return Image(array, (0.9, 1.1, 1.6), (12.0, -30.0, 5.0), oblique_direction(0.3))


@pytest.fixture
def editor(scene):
    """A source volume, a segmentation with "target" (a small block) and "other" (a slab), the editor's logic."""
    image = _image()
    volume = volume_node_from_image(scene, image, "source")
    labels = np.zeros(SHAPE, np.uint8)
    labels[10:14, 12:20, 12:20] = 1
    labels[:, :, :4] = 2
    segments = [{"value": 1, "name": "target", "color": (1, 0, 0)}, {"value": 2, "name": "other", "color": (0, 1, 0)}]
    node = apply_label_map(scene, image.with_array(labels), segments, volume, None, "segmentation")
    ids = [node.GetSegmentation().GetSegmentIdBySegmentName(s["name"]) for s in segments]
    editor_node = scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    return types.SimpleNamespace(image=image, volume=volume, node=node, ids=ids, editor_node=editor_node,
                                 logic=editor_logic(editor_node, node, volume), labels=labels)


def _segment(editor, segment_id: str) -> np.ndarray:
    return label_map_from_segment_ids(editor.node, editor.volume, [segment_id]) > 0


def _ras(image: Image, kji, jitter=(0.0, 0.0, 0.0)) -> tuple[float, float, float]:
    ijk = np.array([kji[2], kji[1], kji[0]], float) + np.asarray(jitter)
    return tuple(float(v) for v in (image.index_to_ras() @ np.r_[ijk, 1.0])[:3])


def _point(editor, kji, positive: bool = True):
    fiducials = editor.node.GetScene().AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    fiducials.AddControlPointWorld(*_ras(editor.image, kji, (0.3, -0.2, 0.4)))
    prompts = prompts_from_markups(fiducials, editor.image, positive)
    editor.node.GetScene().RemoveNode(fiducials)
    return prompts


def _run(job):
    assert job.wait(TIMEOUT) is JobState.SUCCEEDED, job.engine.error
    return job.finish()


def _preview_array(session: PromptSegmentation, editor) -> np.ndarray:
    node = session.preview.node
    return label_map_from_segment_ids(node, editor.volume, [node.GetSegmentation().GetNthSegmentID(0)]) > 0


def test_points_update_a_preview_undo_and_reset(editor, model, scene):
    before = label_map_from_segment_ids(editor.node, editor.volume, editor.ids)
    session = PromptSegmentation(editor.node, editor.ids[0], editor.volume, model, "cpu")
    click, negative, more = _point(editor, (12, 16, 16)), _point(editor, (3, 4, 28), False), _point(editor, (9, 9, 9))
    preview = _run(session.add(*click))
    first = preview.labels.array.copy()
    assert preview.labels.same_grid(editor.image) and 0 < first.sum() < first.size
    assert preview.node.GetAttribute(PREVIEW_ATTRIBUTE) == "1" and preview.targets == {1: editor.ids[0]}
    assert np.array_equal(_preview_array(session, editor), first > 0)
    assert np.array_equal(label_map_from_segment_ids(editor.node, editor.volume, editor.ids), before)
    assert session.last_result.license == "Apache-2.0 (random test weights)"
    seconds = session.last_result.seconds
    assert len(seconds) == 1 and session.timing().startswith(f"{seconds[0]:.1f} s")
    node_id = preview.node.GetID()
    job = session.submit(*negative)
    assert session.submit(*more) is None and session.shown() == click + negative + more  # waits for the first
    second = _run(job).labels.array.copy()
    assert session.history == click + negative and not session.last_result.replayed
    assert len(session.last_result.seconds) == 1  # the worker ran only the new prompt
    preview = _run(session.run_waiting())
    assert session.history == click + negative + more and len(session.last_result.seconds) == 1
    assert preview.node.GetID() == node_id  # the preview was updated in place
    preview = _run(session.undo_prompt())
    assert session.history == click + negative and session.last_result.seconds == []
    assert np.array_equal(preview.labels.array, second) and np.array_equal(_preview_array(session, editor), second > 0)
    session.reset()
    assert session.history == [] and session.preview is None and scene.GetNodeByID(node_id) is None
    _run(session.add(*click))
    assert session.undo_prompt() is None and session.preview is None and session.history == []  # nothing to run
    assert np.array_equal(label_map_from_segment_ids(editor.node, editor.volume, editor.ids), before)
    folder = session.folder
    session.close()
    assert not folder.exists()


def test_seed_from_the_segment_then_apply_with_the_editors_masking_in_one_undo_step(editor, model, scene):
    target, other = editor.ids
    before_target, before_other = _segment(editor, target), _segment(editor, other)
    session = PromptSegmentation(editor.node, target, editor.volume, model, "cpu")
    preview = _run(session.seed_from_segment())
    assert np.array_equal(preview.labels.array > 0, before_target)  # the segment, exactly, on the oblique grid
    assert np.array_equal(_preview_array(session, editor), before_target) and session.history == []
    labels = _run(session.add(*_point(editor, (12, 16, 16)))).labels.array > 0
    assert len(session.last_result.seconds) == 1 and session.seed_path.is_file()
    area = np.zeros(SHAPE, np.uint8)
    area[:, :, :16] = 1
    apply_label_map(scene, editor.image.with_array(area), [{"value": 1, "name": "area", "color": (0, 0, 1)}],
                    editor.volume, editor.node)
    editor.editor_node.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedInsideSingleSegment)
    editor.editor_node.SetMaskSegmentID(editor.node.GetSegmentation().GetSegmentIdBySegmentName("area"))
    editor.editor_node.SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteAllSegments)
    inside = area > 0
    assert labels[inside].any() and (labels & ~before_target)[~inside].any()  # masking has something to do
    assert session.apply(editor.logic) == [target] and session.preview is None
    written, overwritten = _segment(editor, target), _segment(editor, other)
    assert np.array_equal(written[inside], labels[inside]) and np.array_equal(written[~inside], before_target[~inside])
    assert np.array_equal(overwritten, before_other & ~(labels & inside))
    editor.logic.Undo()
    assert np.array_equal(_segment(editor, target), before_target) and np.array_equal(_segment(editor, other),
                                                                                      before_other)
    session.close()


def test_a_failed_or_cancelled_interaction_changes_nothing(editor, model, scene):
    session = PromptSegmentation(editor.node, editor.ids[0], editor.volume, model, "cpu")
    preview = _run(session.add(*_point(editor, (12, 16, 16))))
    fiducials = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    fiducials.AddControlPointWorld(*_ras(editor.image, (12, 16, 60)))
    outside = prompts_from_markups(fiducials, editor.image)
    history, labels, count = list(session.history), preview.labels.array.copy(), scene.GetNumberOfNodes()
    job = session.add(*outside)
    assert job.wait(TIMEOUT) is JobState.FAILED
    with pytest.raises(JobFailed, match="lies outside the image"):
        job.finish()
    assert not job.folder.exists()
    job = session.add(*_point(editor, (6, 8, 8), positive=False))
    with pytest.raises(InputError, match="still running"):
        session.add(*_point(editor, (6, 9, 8)))
    assert session.submit(*_point(editor, (6, 9, 8))) is None and len(session.waiting) == 1
    job.cancel()
    with pytest.raises(JobFailed):
        job.finish()
    assert session.waiting == [] and session.run_waiting() is None  # what waited on it goes with it
    assert session.history == history and session.preview is preview and scene.GetNumberOfNodes() == count
    assert np.array_equal(_preview_array(session, editor), labels > 0)
    assert np.array_equal(_segment(editor, editor.ids[0]), editor.labels == 1)
    session.close()


def test_a_session_needs_a_segment_and_a_model_and_tells_timing_and_licence(editor, tmp_path: Path):
    with pytest.raises(InputError, match="select a segment"):
        PromptSegmentation(editor.node, "missing", editor.volume, "model")
    with pytest.raises(InputError, match="choose a promptable model"):
        PromptSegmentation(editor.node, editor.ids[0], editor.volume, " ")
    result = InteractResult("labels.nrrd", "nnInteractive", "CC-BY-NC-SA-4.0", [0.84], False, 1.9)
    assert describe_timing(result) == "0.8 s (1.9 s in all)"
    assert describe_timing(InteractResult("l", "f", "x", [0.5, 0.7], True, 1.3)) == \
        "1.2 s for 2 prompts - replayed from the first prompt"
    assert describe_timing(InteractResult("l", "f", "x", [], False, 0.3)) == "0.3 s (undo or seed)"
    (tmp_path / "LICENSE").write_text("CC-BY-NC-SA-4.0\n\nAttribution...\n")
    assert model_licence(str(tmp_path)) == "CC-BY-NC-SA-4.0" and model_licence(str(tmp_path / "missing")) == ""


def test_a_library_models_licence_comes_from_its_card(model):
    """The panel shows a library model's licence as its card (the library's list) says it."""
    import json

    from meddl.cli import main
    from meddl.models import store
    from meddl.models.formats import card_path_for

    assert main(["models", "import", model, "--id", "clicks"]) == 0
    assert model_licence("clicks") == "Apache-2.0 (random test weights)"
    card_path = card_path_for(store.installed("clicks").model_path)
    card = json.loads(card_path.read_text(encoding="utf-8"))
    card_path.write_text(json.dumps({**card, "license": "CC-BY-NC-SA-4.0"}), encoding="utf-8")
    assert model_licence("clicks") == "CC-BY-NC-SA-4.0"
