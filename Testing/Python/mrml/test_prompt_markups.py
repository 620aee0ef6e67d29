"""Markups placed in the views become prompts on the right voxels of an oblique, anisotropic source volume (points,
2D and 3D boxes from a ROI, scribbles from a curve, lassos from a closed curve), and `PromptMarkups` places them
through the scene's interaction and selection nodes as Slicer's views do."""

from __future__ import annotations

import numpy as np
import pytest
import slicer
import vtk
from meddl.errors import InputError
from meddl.image import Image
from meddl.interactive import prompts
from meddl_testing import oblique_direction
from MedDLLib.prompt_markups import PromptMarkups, prompts_from_markups


def _image() -> Image:
    return Image(np.zeros((24, 32, 32), np.float32), (0.9, 1.1, 1.6), (12.0, -30.0, 5.0), oblique_direction(0.3))


def _ras(image: Image, kji, jitter=(0.0, 0.0, 0.0)) -> tuple[float, float, float]:
    ijk = np.array([kji[2], kji[1], kji[0]], float) + np.asarray(jitter)
    return tuple(float(v) for v in (image.index_to_ras() @ np.r_[ijk, 1.0])[:3])


def _fiducials(scene, points):
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    for point in points:
        node.AddControlPointWorld(*point)
    return node


def test_markups_become_prompts_on_the_voxels_of_an_oblique_anisotropic_volume(scene):
    image = _image()
    jitter = np.array([0.3, -0.4, 0.2])
    points = prompts_from_markups(_fiducials(scene, [_ras(image, (7, 15, 9), jitter), _ras(image, (2, 3, 4))]),
                                  image, positive=False)
    assert [prompts.point_voxel(image, p.points[0]) for p in points] == [(7, 15, 9), (2, 3, 4)]
    assert all(p.kind == "point" and not p.positive and p.space == "RAS" for p in points)
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode")  # aligned with the volume: exactly its voxels
    low, high = np.array(_ras(image, (4, 5, 6), -0.45)), np.array(_ras(image, (9, 20, 18), 0.49))
    axes = image.index_to_ras()[:3, :3] / np.array(image.spacing)
    roi.SetAndObserveObjectToNodeMatrix(_rotation(axes))
    roi.SetCenterWorld(*(low + high) / 2)
    roi.SetSize(*np.abs(np.linalg.inv(axes) @ (high - low)))
    box = prompts_from_markups(roi, image)[0]
    assert box.kind == "box" and prompts.box_voxels(image, *box.points) == [[4, 10], [5, 21], [6, 19]]
    flat = prompts_from_markups(roi, image, flat_box=True)[0]
    assert prompts.box_voxels(image, *flat.points) == [[7, 8], [5, 21], [6, 19]]  # k, the thinnest, at the centre
    lasso = scene.AddNewNodeByClass("vtkMRMLMarkupsClosedCurveNode")
    for kji, shift in (((8, 4, 4), 0.3), ((8, 4, 20), -0.4), ((8, 20, 20), 0.2), ((8, 20, 4), -0.1)):
        lasso.AddControlPointWorld(*_ras(image, kji, (0.0, 0.0, shift)))  # off the slice by under half a voxel
    (prompt,) = prompts_from_markups(lasso, image)
    mask, where = prompts.lasso_voxels(image, prompt.points)
    assert prompt.kind == "lasso" and where[0] == [8, 9] and mask[0, 8, 8] == 1
    lasso.SetNthControlPointPositionWorld(0, *_ras(image, (12, 4, 4)))
    with pytest.raises(InputError, match="drawn on one slice"):
        prompts_from_markups(lasso, image)
    curve = scene.AddNewNodeByClass("vtkMRMLMarkupsCurveNode")
    curve.AddControlPointWorld(*_ras(image, (5, 5, 5)))
    curve.AddControlPointWorld(*_ras(image, (5, 5, 15)))
    (scribble,) = prompts_from_markups(curve, image)
    voxels = {tuple(v) for v in prompts.to_voxels(image, scribble.points)}
    assert scribble.kind == "scribble" and {(5, 5, 5), (5, 5, 15)} <= voxels and {v[:2] for v in voxels} == {(5, 5)}
    with pytest.raises(InputError, match="not a point list"):
        prompts_from_markups(scene.AddNewNodeByClass("vtkMRMLMarkupsLineNode"), image)


def test_the_tools_markups_give_each_placed_prompt_once_and_show_the_point_prompts(scene):
    image = Image(_image().array, (0.9, 1.1, 1.6), (12.0, -30.0, 5.0))  # axis-aligned, as a ROI placed in a view
    markups = PromptMarkups(scene, None, None, lambda tool: None)
    positive = markups.node("positive")
    positive.AddControlPointWorld(*_ras(image, (3, 4, 5)))
    first = markups.take("positive", image)
    positive.AddControlPointWorld(*_ras(image, (6, 7, 8)))
    second = markups.take("positive", image)
    assert [(p.kind, p.positive, p.points) for p in first + second] == [
        ("point", True, (_ras(image, (3, 4, 5)),)), ("point", True, (_ras(image, (6, 7, 8)),))]
    markups.node("negative").AddControlPointWorld(*_ras(image, (9, 9, 9)))
    (negative,) = markups.take("negative", image, negative=False)  # a point tool's sign is its own
    assert not negative.positive and not positive.GetSaveWithScene()
    roi = markups.node("box")
    roi.AddControlPointWorld(*_ras(image, (5, 2, 2)))
    roi.AddControlPointWorld(*_ras(image, (5, 10, 12)))
    (box,) = markups.take("box", image, negative=True)
    assert box.kind == "box" and not box.positive and roi.GetNumberOfControlPoints() == 0
    assert prompts.box_voxels(image, *box.points)[1:] == [[2, 11], [2, 13]]
    assert prompts.box_voxels(image, *box.points)[0][1] - prompts.box_voxels(image, *box.points)[0][0] == 1
    seen = []
    positive.AddObserver(slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent,
                         lambda caller, event: seen.append(markups.take("positive", image)))
    markups.show([first[0], box, negative])  # the history: rebuilding the lists places nothing
    assert seen and all(taken == [] for taken in seen)
    assert positive.GetNumberOfControlPoints() == 1 and markups.node("negative").GetNumberOfControlPoints() == 1
    assert tuple(positive.GetNthControlPointPositionWorld(0)) == pytest.approx(first[0].points[0])
    nodes = list(markups.nodes.values())
    markups.remove()
    assert all(node.GetScene() is None for node in nodes) and markups.nodes == {}


def _rotation(axes: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for row in range(3):
        for column in range(3):
            matrix.SetElement(row, column, float(axes[row, column]))
    return matrix




def test_placing_in_the_views_gives_points_at_once_and_a_shape_when_its_placing_ends(headless):
    scene, logic, image = headless.scene, headless.application_logic, _image()
    interaction, selection = logic.GetInteractionNode(), logic.GetSelectionNode()
    placed, stopped = [], []
    markups = PromptMarkups(scene, interaction, selection, placed.append, lambda: stopped.append(True))
    markups.start("positive")
    points = markups.node("positive")
    assert interaction.GetCurrentInteractionMode() == interaction.Place and interaction.GetPlaceModePersistence()
    assert selection.GetActivePlaceNodeID() == points.GetID()
    points.AddControlPointWorld(*_ras(image, (3, 4, 5)))  # what a click in a view does
    assert placed == ["positive"]
    markups.start("scribble")
    curve = markups.node("scribble")
    assert selection.GetActivePlaceNodeID() == curve.GetID() and not interaction.GetPlaceModePersistence()
    curve.AddControlPointWorld(*_ras(image, (5, 5, 5)))
    curve.AddControlPointWorld(*_ras(image, (5, 9, 15)))
    assert placed == ["positive"]  # a curve is not done until its placing ends
    interaction.SetCurrentInteractionMode(interaction.ViewTransform)  # the right-click that ends it
    assert placed == ["positive", "scribble"] and markups.tool == "scribble"
    assert [p.kind for p in markups.take("scribble", image)] == ["scribble"] and curve.GetNumberOfControlPoints() == 0
    markups.resume()  # the next curve
    assert interaction.GetCurrentInteractionMode() == interaction.Place
    interaction.SetCurrentInteractionMode(interaction.ViewTransform)  # Esc, nothing placed: the tool ends
    assert stopped == [True] and markups.tool is None and placed == ["positive", "scribble"]
    markups.start("box")
    markups.stop()
    points.AddControlPointWorld(*_ras(image, (6, 4, 5)))
    assert interaction.GetCurrentInteractionMode() == interaction.ViewTransform and len(placed) == 2
    markups.remove()
    assert points.GetScene() is None and curve.GetScene() is None
