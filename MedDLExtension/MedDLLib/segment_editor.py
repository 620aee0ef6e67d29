"""The MedDL Segment Editor effect's logic (no Qt), on the editor's own MRML classes.

Two jobs run on the background worker and end in a preview: a segmentation node of its own, shown beside the
editor's segmentation, which the scene gains only when the job succeeded. `apply_preview` writes it into the
editor's segmentation through `vtkSlicerSegmentEditorLogic.ModifySegmentByLabelmap`, so the editor's masking
settings (editable area, editable intensity range, overwrite other segments) apply exactly as for Slicer's own
effects, after one `SaveStateForUndo`: one Undo restores the segmentation. `discard_preview` removes it.

- `FillJob`: the painted slices of the chosen segments -> `meddl fill` -> every segment filled between its
  slices (painted slices kept). A `FillSession` keeps each round's network, so the next round (after painting
  more) starts from it.
- `ModelJob`: a segmentation model on the source volume (optionally inside a markups ROI) -> its labels, to
  become new named segments or to go into the selected segment.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import slicer
from meddl.cli.fill import FillRequest, FillResult
from meddl.cli.segment import SegmentRequest, SegmentResult
from meddl.errors import InputError
from meddl.image import Image, check_volume
from meddl.io import read_image, write_image
from meddl.painting import check_painting, drawn_slices

from .jobs import FolderJob
from .segmentations import apply_label_map, label_map_from_segment_ids, oriented_mask, terminology_tag
from .volumes import image_from_volume_node

PREVIEW_ATTRIBUTE = "MedDL.SegmentEditorPreview"


@dataclass
class Preview:
    """A job's result, not yet in the editor's segmentation: label value -> target segment id ("" = a new
    segment named in `labels`)."""

    node: Any  # the preview vtkMRMLSegmentationNode
    labels: Image
    targets: dict[int, str]
    names: dict[int, dict] = field(default_factory=dict)  # value -> {"name", "color", "terminology"} of new ones


def editor_logic(segment_editor_node, segmentation_node, source_volume):
    """Slicer's segment editor logic on these nodes (the effect passes the editor's own)."""
    logic = slicer.vtkSlicerSegmentEditorLogic()
    logic.SetMRMLScene(segmentation_node.GetScene())
    logic.SetSegmentEditorNode(segment_editor_node)
    logic.SetSegmentationNode(segmentation_node)
    logic.SetSourceVolumeNode(source_volume)
    return logic


def apply_preview(preview: Preview, logic) -> list[str]:
    """Write the preview into the editor's segmentation (one undo step, the editor's masking) and remove it;
    returns the segment ids written."""
    segmentation_node = logic.GetSegmentationNode()
    segmentation = segmentation_node.GetSegmentation()
    masks = {value: oriented_mask(preview.labels.array == value, preview.labels) for value in preview.targets}
    logic.SaveStateForUndo()
    written = []
    for value, segment_id in preview.targets.items():
        if not segment_id:
            new = preview.names[value]
            segment_id = segmentation.AddEmptySegment("", new["name"], list(new["color"]))
            tag = terminology_tag(new.get("terminology"))
            if tag:
                segmentation.GetSegment(segment_id).SetTerminology(tag)
        logic.ModifySegmentByLabelmap(segmentation_node, segment_id, masks[value],
                                      slicer.vtkSlicerSegmentEditorLogic.ModificationModeSet, True, False)
        written.append(segment_id)
    discard_preview(preview)
    return written


def discard_preview(preview: Preview) -> None:
    """Remove the preview node: the scene is as it was before the job."""
    scene = preview.node.GetScene()
    if scene is not None:
        scene.RemoveNode(preview.node)


def _preview_node(scene, labels: Image, table: Sequence[dict], source_volume, name: str):
    node = apply_label_map(scene, labels, table, source_volume, None, name)
    node.SetAttribute(PREVIEW_ATTRIBUTE, "1")
    return node


def painted_labels(segmentation_node, segment_ids: Sequence[str], source_volume, source: Image) -> Image:
    """The painted voxels of `segment_ids` (value i + 1 for the i-th) on `source`, the source volume's image;
    refuses an empty segment and a painting with nothing to fill between."""
    segmentation = segmentation_node.GetSegmentation()
    if not segment_ids:
        raise InputError("select the segments to fill")
    unknown = [segment_id for segment_id in segment_ids if segmentation.GetSegment(segment_id) is None]
    if unknown:
        raise InputError(f"segment(s) {', '.join(unknown)} are not in {segmentation_node.GetName()}")
    labels = label_map_from_segment_ids(segmentation_node, source_volume, segment_ids)
    names = {value: segmentation.GetSegment(segment_id).GetName() for value, segment_id in enumerate(segment_ids, 1)}
    check_painting(labels, list(names), drawn_slices(labels), names)
    return source.with_array(labels.astype(np.uint8))


class FillSession:
    """Rounds of fill on one segmentation and source volume: each round starts from the network the previous
    one trained (kept in a private folder, removed by `close`)."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="meddl-fill-session-"))
        self.state: Optional[Path] = None
        self.key: Optional[tuple] = None
        self.rounds = 0

    def start(self, segmentation_node, segment_ids: Sequence[str], source_volume, device: str = "auto",
              steps: Optional[int] = None) -> FillJob:
        key = (segmentation_node.GetID(), source_volume.GetID(), tuple(segment_ids))
        if key != self.key:  # other segments or volume: a network trained for others does not start this one
            self.key, self.state = key, None
        return FillJob(self, segmentation_node, segment_ids, source_volume, device, steps)

    def keep_state(self, path: Path) -> None:
        self.rounds += 1
        kept = self.folder / f"round{self.rounds}.pt"
        shutil.copyfile(path, kept)
        if self.state is not None:
            self.state.unlink(missing_ok=True)
        self.state = kept

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        self.state, self.key = None, None


class FillJob(FolderJob):
    """Fills the chosen segments between their painted slices on the worker; `finish()` gives a Preview."""

    def __init__(self, session: FillSession, segmentation_node, segment_ids: Sequence[str], source_volume,
                 device: str = "auto", steps: Optional[int] = None) -> None:
        image = image_from_volume_node(source_volume)
        check_volume(image, what=f"volume {source_volume.GetName()!r}")
        painted = painted_labels(segmentation_node, segment_ids, source_volume, image)
        self.session, self.segmentation_node, self.source_volume = session, segmentation_node, source_volume
        self.segment_ids = list(segment_ids)
        self.warm_start = session.state is not None
        super().__init__("meddl-fill-")
        try:
            image_path = write_image(image, self.folder / "image.nrrd", False)
            painted_path = write_image(painted, self.folder / "painted.nrrd", False)
        except Exception:
            self.clean_up()
            raise
        request = FillRequest(str(image_path), str(painted_path), str(self.folder / "filled.nrrd"),
                              str(session.state) if session.state else None, str(self.folder / "state.pt"),
                              steps, device, compress=False)
        self._start(request, device)

    def _apply(self, result: FillResult) -> Preview:
        labels = read_image(result.labels)
        self.session.keep_state(Path(result.state))
        segmentation = self.segmentation_node.GetSegmentation()
        table = [{"value": value, "name": segmentation.GetSegment(segment_id).GetName(),
                  "color": segmentation.GetSegment(segment_id).GetColor()}
                 for value, segment_id in enumerate(self.segment_ids, start=1)]
        node = _preview_node(self.segmentation_node.GetScene(), labels, table, self.source_volume,
                             f"{self.segmentation_node.GetName()} fill preview")
        return Preview(node, labels, {value: segment_id for value, segment_id in enumerate(self.segment_ids, 1)})


def roi_box(image: Image, roi_node) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """The (k, j, i) start and stop of the image voxels inside a markups ROI's RAS bounding box."""
    bounds = [0.0] * 6
    roi_node.GetRASBounds(bounds)
    corners = np.array([[x, y, z, 1.0] for x in bounds[0:2] for y in bounds[2:4] for z in bounds[4:6]])
    lps = corners * np.array([-1.0, -1.0, 1.0, 1.0])
    ijk = (np.linalg.inv(image.index_to_lps()) @ lps.T)[:3].T
    shape_ijk = np.array(image.shape[::-1])
    low = np.clip(np.floor(ijk.min(axis=0) + 0.5).astype(int), 0, shape_ijk)
    high = np.clip(np.floor(ijk.max(axis=0) + 0.5).astype(int) + 1, 0, shape_ijk)
    if np.any(high <= low):
        raise InputError(f"the ROI {roi_node.GetName()!r} does not overlap the source volume")
    return tuple(int(v) for v in low[::-1]), tuple(int(v) for v in high[::-1])


def roi_frame(roi_node) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A markups ROI's centre and size (RAS mm) and its three unit axes (rows), in world coordinates."""
    centre, size = np.zeros(3), np.zeros(3)
    roi_node.GetCenterWorld(centre)
    roi_node.GetSizeWorld(size)
    axes = []
    for getter in (roi_node.GetXAxisWorld, roi_node.GetYAxisWorld, roi_node.GetZAxisWorld):
        axis = np.zeros(3)
        getter(axis)
        axes.append(axis / np.linalg.norm(axis))
    return centre, size, np.array(axes)


def inside_roi(image: Image, roi_node, box) -> np.ndarray:
    """Which voxels of the (k, j, i) `box` of `image` have their centres inside the (possibly rotated) ROI box."""
    (k0, j0, i0), (k1, j1, i1) = box
    k, j, i = np.meshgrid(np.arange(k0, k1), np.arange(j0, j1), np.arange(i0, i1), indexing="ij")
    lps = image.index_to_lps() @ np.stack([i.ravel(), j.ravel(), k.ravel(), np.ones(i.size)])
    ras = lps[:3].T * np.array([-1.0, -1.0, 1.0])
    centre, size, axes = roi_frame(roi_node)
    distance = np.abs((ras - centre) @ axes.T)
    return np.all(distance <= size / 2 + 1e-6, axis=1).reshape(k.shape)


class ModelJob(FolderJob):
    """Segments the source volume (or the part inside a markups ROI) with a model on the worker; `finish()`
    gives a Preview whose labels become new segments, or go into the segment `into_segment`. With a ROI the
    model sees the voxels of the ROI's bounding box, and only those inside the ROI are labelled."""

    def __init__(self, segmentation_node, source_volume, model: str, device: str = "auto", roi_node=None,
                 into_segment: Optional[str] = None, label_value: Optional[int] = None,
                 trust_model: bool = False) -> None:
        """`into_segment`: the segment id the labels go into (`label_value` only, else all labels)."""
        self.segmentation_node, self.source_volume, self.into_segment = segmentation_node, source_volume, into_segment
        self.label_value = label_value
        image = image_from_volume_node(source_volume)
        check_volume(image, what=f"volume {source_volume.GetName()!r}")
        self.full = image
        self.box = roi_box(image, roi_node) if roi_node is not None else None
        self.inside = inside_roi(image, roi_node, self.box) if self.box else None
        super().__init__("meddl-editor-model-")
        try:
            path = write_image(image.crop(*self.box) if self.box else image, self.folder / "input.nrrd", False)
        except Exception:
            self.clean_up()
            raise
        request = SegmentRequest(str(path), str(self.folder / "labels.nrrd"), model, device, trust_model,
                                 compress=False)
        self._start(request, device)

    def _apply(self, result: SegmentResult) -> Preview:
        table = json.loads(Path(result.label_table).read_text(encoding="utf-8"))["labels"]
        found = read_image(result.labels).array
        labels = np.zeros(self.full.shape, np.uint8)
        if self.box:  # only voxels inside the ROI itself, not just its bounding box
            labels[tuple(slice(a, b) for a, b in zip(*self.box))] = np.where(self.inside, found, 0)
        else:
            labels[...] = found
        labels_image = self.full.with_array(labels)
        node = _preview_node(self.segmentation_node.GetScene(), labels_image, table, self.source_volume,
                             f"{self.segmentation_node.GetName()} model preview")
        if self.into_segment:
            chosen = labels == self.label_value if self.label_value is not None else labels > 0
            merged = labels_image.with_array(chosen.astype(np.uint8))
            return Preview(node, merged, {1: self.into_segment})
        names = {int(label["value"]): label for label in table}
        return Preview(node, labels_image, {value: "" for value in names}, names)
