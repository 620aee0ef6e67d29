"""Prompts from what the views give: markups placed in world (RAS) coordinates become `Prompt`s on the source
volume's voxels (no Qt). A point list gives points, a ROI a box (2D on a slice, or 3D), an open curve a scribble,
a closed curve a lasso; `PromptMarkups` owns one markups node per tool and the placing in the views.

Boxes and lassos are mapped through the volume's own grid (its IJK-to-RAS), so a ROI or outline on an oblique,
anisotropic volume covers exactly the voxels under it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import slicer
from meddl.errors import InputError
from meddl.image import Image

from .segment_editor import roi_frame

if TYPE_CHECKING:  # see `_prompt`
    from meddl.interactive.session import Prompt

# tool -> (markups class, sign: True/False for points, None: the user's choice; whether a box is 2D)
TOOLS = {"positive": ("vtkMRMLMarkupsFiducialNode", True, False),
         "negative": ("vtkMRMLMarkupsFiducialNode", False, False),
         "box": ("vtkMRMLMarkupsROINode", None, True), "box3d": ("vtkMRMLMarkupsROINode", None, False),
         "scribble": ("vtkMRMLMarkupsCurveNode", None, False), "lasso": ("vtkMRMLMarkupsClosedCurveNode", None, False)}
POINT_TOOLS = ("positive", "negative")
COLORS = {True: (0.2, 0.9, 0.2), False: (0.9, 0.2, 0.2)}


def _prompt(kind: str, points: tuple, positive: bool) -> Prompt:
    """A `Prompt`, its class imported only now: importing the engine's `meddl.interactive` loads torch, and Slicer's
    process imports MedDLLib before MedDL's first-use install of torch."""
    from meddl.interactive.session import Prompt

    return Prompt(kind, points, positive)


def _control_points(node) -> np.ndarray:
    points = [node.GetNthControlPointPositionWorld(index) for index in range(node.GetNumberOfControlPoints())
              if node.GetNthControlPointPositionStatus(index) == slicer.vtkMRMLMarkupsNode.PositionDefined]
    return np.array(points, dtype=float).reshape(-1, 3)


def _curve_points(node) -> np.ndarray:
    """The curve as drawn (its interpolated points), else its control points."""
    points = node.GetCurvePointsWorld()
    if points is None or points.GetNumberOfPoints() == 0:
        return _control_points(node)
    return np.array([points.GetPoint(index) for index in range(points.GetNumberOfPoints())])


def _to_kji(image: Image, ras: np.ndarray) -> np.ndarray:
    ijk = (np.linalg.inv(image.index_to_ras()) @ np.c_[ras, np.ones(len(ras))].T)[:3].T
    return ijk[:, ::-1]


def _to_ras(image: Image, kji: np.ndarray) -> np.ndarray:
    ijk = np.asarray(kji, dtype=float).reshape(-1, 3)[:, ::-1]
    return (image.index_to_ras() @ np.c_[ijk, np.ones(len(ijk))].T)[:3].T


def _positions(ras: np.ndarray) -> tuple[tuple[float, float, float], ...]:
    return tuple(tuple(float(v) for v in point) for point in ras)


def box_prompt(roi_node, image: Image, positive: bool = True, flat: bool = False) -> Prompt:
    """The voxels of `image` under a markups ROI (rotated or not) as a box prompt: the corner voxels' centres.
    `flat`: a 2D box on the slice through the ROI's centre, across the volume axis the ROI is thinnest along."""
    centre, size, axes = roi_frame(roi_node)
    signs = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)])
    corners = _to_kji(image, centre + (signs * size) @ axes)
    low, high = np.floor(corners.min(axis=0) + 0.5), np.floor(corners.max(axis=0) + 0.5)
    if flat:
        across = int(np.argmin(high - low))
        low[across] = high[across] = np.floor(_to_kji(image, centre[None])[0, across] + 0.5)
    return _prompt("box", _positions(_to_ras(image, np.array([low, high]))), positive)


def lasso_prompt(points: np.ndarray, image: Image, positive: bool = True) -> Prompt:
    """A closed outline as a lasso, moved onto the volume slice it was drawn on (within a voxel of it)."""
    kji = _to_kji(image, points)
    spread = kji.max(axis=0) - kji.min(axis=0)
    across = int(np.argmin(spread))
    if spread[across] > 1.0:
        raise InputError("a lasso is drawn on one slice of the source volume: draw it in a slice view aligned "
                         "with the volume (Reformat: rotate to volume plane)")
    kji[:, across] = np.floor(np.median(kji[:, across]) + 0.5)
    return _prompt("lasso", _positions(_to_ras(image, kji)), positive)


def prompts_from_markups(node, image: Image, positive: bool = True, flat_box: bool = False) -> list[Prompt]:
    """Prompts from a markups node placed in the views: one point per point of a point list, a box from a ROI
    (`flat_box`: 2D, see `box_prompt`), a scribble from an open curve, a lasso from a closed curve."""
    if node.IsA("vtkMRMLMarkupsROINode"):
        return [box_prompt(node, image, positive, flat_box)]
    if node.IsA("vtkMRMLMarkupsClosedCurveNode"):
        points = _curve_points(node)
        return [lasso_prompt(points, image, positive)] if len(points) >= 3 else []
    if node.IsA("vtkMRMLMarkupsCurveNode"):
        points = _curve_points(node)
        return [_prompt("scribble", _positions(points), positive)] if len(points) else []
    if node.IsA("vtkMRMLMarkupsFiducialNode"):
        return [_prompt("point", (position,), positive) for position in _positions(_control_points(node))]
    raise InputError(f"{node.GetName()!r} ({node.GetClassName()}) is not a point list, ROI or curve")


class PromptMarkups:
    """The markups nodes prompts are placed with: one per tool, kept out of saved scenes, placed through the
    scene's interaction and selection nodes. `placed(tool)` is called when a prompt is ready to `take`: each
    point, or a box or curve when its placing ends; `stopped()` when placing ended with nothing placed (Esc,
    another mouse mode). The point lists `show` the point prompts of the history, so an undone or failed prompt's
    point disappears."""

    def __init__(self, scene, interaction_node, selection_node, placed: Callable[[str], None],
                 stopped: Callable[[], None] = lambda: None) -> None:
        self.scene, self.interaction, self.selection = scene, interaction_node, selection_node
        self.placed, self.stopped = placed, stopped
        self.nodes: dict[str, Any] = {}
        self.tool: str | None = None
        self.updating = False  # while the point lists are rebuilt: their events are not placements
        self._observations: list[tuple[Any, int]] = []

    def node(self, tool: str):
        """The tool's markups node (the point tools each have their own), made when first needed."""
        class_name, sign, _flat = TOOLS[tool]
        node = self.nodes.get(tool)
        if node is None or node.GetScene() is None:
            node = self.scene.AddNewNodeByClass(class_name, f"MedDL {tool} prompt")
            node.SetSaveWithScene(False)
            node.CreateDefaultDisplayNodes()
            display = node.GetDisplayNode()
            if display is not None:
                display.SetSelectedColor(*COLORS[sign is not False])
                display.SetColor(*COLORS[sign is not False])
            self.nodes[tool] = node
        return node

    def start(self, tool: str) -> None:
        """Place with `tool` in the views: points one after another, a box or curve one at a time."""
        self.stop()
        node = self.node(tool)
        self.tool = tool
        self._observations = [
            (node, node.AddObserver(slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self._on_point)),
            (self.interaction, self.interaction.AddObserver(self.interaction.InteractionModeChangedEvent,
                                                            self._on_mode))]
        self.selection.SetReferenceActivePlaceNodeClassName(node.GetClassName())
        self.selection.SetActivePlaceNodeID(node.GetID())
        self.interaction.SetPlaceModePersistence(1 if tool in POINT_TOOLS else 0)
        self.resume()

    def resume(self) -> None:
        """Place the next box or curve with the current tool."""
        if self.tool is not None:
            self.interaction.SetCurrentInteractionMode(self.interaction.Place)

    def stop(self) -> None:
        """Stop placing (the views go back to their usual mouse mode)."""
        for node, tag in self._observations:
            node.RemoveObserver(tag)
        self._observations = []
        if self.tool is not None and self.interaction.GetCurrentInteractionMode() == self.interaction.Place:
            self.interaction.SetCurrentInteractionMode(self.interaction.ViewTransform)
        self.tool = None

    def _on_point(self, caller=None, event=None) -> None:
        if self.tool in POINT_TOOLS and not self.updating:
            self.placed(self.tool)

    def _on_mode(self, caller=None, event=None) -> None:
        tool = self.tool
        if tool is None or self.interaction.GetCurrentInteractionMode() == self.interaction.Place:
            return
        node = self.nodes.get(tool)
        if tool not in POINT_TOOLS and node is not None and (node.GetNumberOfControlPoints() > 0 or (
                node.IsA("vtkMRMLMarkupsROINode") and node.GetControlPointPlacementComplete())):
            self.placed(tool)
            return
        self.stop()
        self.stopped()

    def take(self, tool: str, image: Image, negative: bool = False) -> list[Prompt]:
        """The prompt just placed with `tool` (none while the point lists are rebuilt); a box or curve is
        cleared from its node, even when it cannot be a prompt. `negative` is the sign of a box, curve or lasso."""
        _class_name, sign, flat = TOOLS[tool]
        node = self.nodes.get(tool)
        if self.updating or node is None:
            return []
        if sign is not None:
            return prompts_from_markups(node, image, sign)[-1:]
        try:
            complete = not node.IsA("vtkMRMLMarkupsROINode") or node.GetControlPointPlacementComplete()
            return prompts_from_markups(node, image, not negative, flat) if complete else []
        finally:
            with self._rebuilding():
                node.RemoveAllControlPoints()

    def show(self, prompts: Sequence[Prompt]) -> None:
        """The point lists show the point prompts among `prompts` (the history, and any waiting to run)."""
        with self._rebuilding():
            for tool, sign in (("positive", True), ("negative", False)):
                node = self.node(tool)
                node.RemoveAllControlPoints()
                for prompt in prompts:
                    if prompt.kind == "point" and prompt.positive is sign:
                        node.AddControlPointWorld(*prompt.points[0])

    def remove(self) -> None:
        """Stop placing and remove every node."""
        self.stop()
        for node in self.nodes.values():
            if node.GetScene() is not None:
                node.GetScene().RemoveNode(node)
        self.nodes.clear()

    @contextlib.contextmanager
    def _rebuilding(self) -> Iterator[None]:
        self.updating = True
        try:
            yield
        finally:
            self.updating = False
