"""The MedDL Segment Editor effect's glue that runs without Slicer's application (issue 17): `EditorOwnLogic`
hands `apply_preview` to the editor's own logic the way the effect's host passes the calls on, so the write obeys
the editor's masking and one Undo of the editor's history takes it back; and the segment and volume helpers."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import slicer
from meddl.image import Image
from meddl_testing import band_volume, oblique_direction
from MedDLLib.segment_editor import Preview, apply_preview, editor_logic
from MedDLLib.segmentations import apply_label_map, label_map_from_segment_ids
from MedDLLib.volumes import volume_node_from_image

EFFECT = (Path(__file__).resolve().parents[3] / "MedDLExtension" / "MedDLSegmentation" / "SegmentEditorMedDL"
          / "SegmentEditorEffect.py")


@pytest.fixture
def effect():
    """The effect file loaded as Slicer loads it (module named after its folder), with stand-ins for the
    modules only Slicer's application has; what it loaded is forgotten afterwards."""
    before = set(sys.modules)
    base = types.ModuleType("SegmentEditorEffects")
    base.AbstractScriptedSegmentEditorEffect = type("AbstractScriptedSegmentEditorEffect", (), {})
    stand_ins = {"qt": types.ModuleType("qt"), "SegmentEditorEffects": base}
    sys.modules.update(stand_ins)
    try:
        spec = importlib.util.spec_from_file_location(EFFECT.parent.name, EFFECT)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        yield module
    finally:
        for name in set(sys.modules) - before:
            del sys.modules[name]


class HostEffect:
    """What Slicer's qSlicerSegmentEditorAbstractEffect does with these two calls: hand them to the editor
    widget's vtkSlicerSegmentEditorLogic. Its modification modes are its own enum (names here, so a mode passed
    through untranslated fails)."""

    ModificationModeSet, ModificationModeAdd, ModificationModeRemove = "Set", "Add", "Remove"
    ModificationModeRemoveAll = "RemoveAll"

    def __init__(self, logic) -> None:
        self.logic, self.undo_states = logic, 0

    def saveStateForUndo(self) -> None:
        self.undo_states += 1
        self.logic.SaveStateForUndo()

    def modifySegmentByLabelmap(self, node, segment_id, labelmap, mode, bypass_masking=False) -> None:
        logic_mode = getattr(slicer.vtkSlicerSegmentEditorLogic, f"ModificationMode{mode}")
        self.logic.ModifySegmentByLabelmap(node, segment_id, labelmap, logic_mode, False, bypass_masking)


@pytest.fixture
def editor(scene):
    image = Image(band_volume(), (1.0, 1.2, 0.8), (3.0, -2.0, 1.0), oblique_direction())
    volume = volume_node_from_image(scene, image, "source")
    segments = [{"value": 1, "name": "one", "color": (1, 0, 0)}, {"value": 2, "name": "two", "color": (0, 1, 0)}]
    node = apply_label_map(scene, image.with_array(np.minimum(image.array, 2).astype(np.uint8)), segments, volume,
                           None, "segmentation")
    ids = [node.GetSegmentation().GetSegmentIdBySegmentName(s["name"]) for s in segments]
    editor_node = scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    return types.SimpleNamespace(image=image, volume=volume, node=node, ids=ids, editor_node=editor_node,
                                 logic=editor_logic(editor_node, node, volume))


def test_apply_goes_through_the_editors_own_logic_its_masking_and_its_undo(editor, effect, scene):
    one = editor.ids[0]
    before = label_map_from_segment_ids(editor.node, editor.volume, [one])
    editor.editor_node.SetSourceVolumeIntensityMask(True)  # editable intensity range: 2 to 3 only
    editor.editor_node.SetSourceVolumeIntensityMaskRange(2.0, 3.0)
    labels = editor.image.with_array(np.ones(editor.image.shape, np.uint8))
    preview = Preview(apply_label_map(scene, labels, [{"value": 1, "name": "p", "color": (0, 0, 1)}], editor.volume,
                                      None, "preview"), labels, {1: one})
    host = HostEffect(editor.logic)
    assert apply_preview(preview, effect.EditorOwnLogic(host, editor.node)) == [one]
    after = label_map_from_segment_ids(editor.node, editor.volume, [one]) > 0
    assert host.undo_states == 1 and preview.node.GetScene() is None
    assert after[editor.image.array >= 2].all() and not after[editor.image.array == 0].any()
    assert after[editor.image.array == 1].all()  # painted before, outside the range: kept
    editor.logic.Undo()  # the editor's Undo: one step back to before
    assert np.array_equal(label_map_from_segment_ids(editor.node, editor.volume, [one]), before)


def test_new_segments_are_added_inside_the_undo_step(editor, effect, scene):
    labels = editor.image.with_array((editor.image.array == 3).astype(np.uint8))
    names = {1: {"name": "three", "color": (0, 0, 1)}}
    node = apply_label_map(scene, labels, [{"value": 1, **names[1]}], editor.volume, None, "preview")
    written = apply_preview(Preview(node, labels, {1: ""}, names), effect.EditorOwnLogic(HostEffect(editor.logic),
                                                                                        editor.node))
    segmentation = editor.node.GetSegmentation()
    assert segmentation.GetSegment(written[0]).GetName() == "three"
    assert np.array_equal(label_map_from_segment_ids(editor.node, editor.volume, written) > 0, labels.array > 0)
    editor.logic.Undo()
    assert segmentation.GetNumberOfSegments() == 2


def test_visible_segments_in_the_segmentations_order_and_the_source_volume_of_old_and_new_slicer(editor, effect):
    assert effect.visibleSegmentIds(editor.node) == editor.ids
    editor.node.GetDisplayNode().SetSegmentVisibility(editor.ids[0], False)
    assert effect.visibleSegmentIds(editor.node) == editor.ids[1:]
    assert effect.sourceVolumeOf(editor.editor_node) is editor.volume  # the editor logic set it
    older = types.SimpleNamespace(GetMasterVolumeNode=lambda: editor.volume)  # Slicer before 5.2
    assert effect.sourceVolumeOf(older) is editor.volume
