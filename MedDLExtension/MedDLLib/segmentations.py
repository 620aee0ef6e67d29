"""Label maps from the engine -> segmentation nodes: one named, coloured segment per label."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import slicer
import vtk
from meddl.image import Image
from vtk.util import numpy_support

from .volumes import ijk_to_ras_matrix

# Slicer's serialised terminology entry: context~category~type~modifier~anatomic context~region~modifier
TERMINOLOGY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"


def _code(entry: dict[str, str] | None) -> str:
    if not entry:
        return "^^"
    return f"{entry.get('scheme', '')}^{entry.get('code', '')}^{entry.get('meaning', '')}"


def terminology_tag(terminology: dict[str, Any] | None) -> str | None:
    """The vtkSegment terminology tag for a card's {category, type} codes (SNOMED CT)."""
    if not terminology or "category" not in terminology or "type" not in terminology:
        return None
    return (f"{TERMINOLOGY_CONTEXT}~{_code(terminology['category'])}~{_code(terminology['type'])}~^^"
            f"~{ANATOMIC_CONTEXT}~^^~^^|")


def oriented_mask(mask_kji: np.ndarray, image: Image):
    """A binary vtkOrientedImageData on the image's grid."""
    oriented = slicer.vtkOrientedImageData()
    k, j, i = mask_kji.shape
    oriented.SetDimensions(i, j, k)
    oriented.SetImageToWorldMatrix(ijk_to_ras_matrix(image))
    scalars = numpy_support.numpy_to_vtk(np.ascontiguousarray(mask_kji, dtype=np.uint8).ravel(), deep=True,
                                         array_type=vtk.VTK_UNSIGNED_CHAR)
    oriented.GetPointData().SetScalars(scalars)
    return oriented


def _label_field(label: Any, name: str) -> Any:
    return label[name] if isinstance(label, dict) else getattr(label, name)


def _terminology(label: Any) -> dict | None:
    return label.get("terminology") if isinstance(label, dict) else getattr(label, "terminology", None)


def apply_label_map(scene, label_image: Image, labels: Sequence[Any], reference_volume=None,
                    segmentation_node=None, name: str | None = None):
    """Put one segment per label into `segmentation_node` (new if None) and return the node.

    Segments of the same names in an existing node are replaced; other segments are kept.
    All segment images are built before the scene is touched, so a failure changes nothing.
    """
    prepared = []
    for label in labels:
        mask = label_image.array == int(_label_field(label, "value"))
        prepared.append((label, oriented_mask(mask, label_image)))
    if segmentation_node is None:
        segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name or "Segmentation")
        segmentation_node.CreateDefaultDisplayNodes()
    if reference_volume is not None:
        segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
    segmentation = segmentation_node.GetSegmentation()
    was_modifying = segmentation_node.StartModify()
    try:
        for label, oriented in prepared:
            segment_name = str(_label_field(label, "name"))
            existing = segmentation.GetSegmentIdBySegmentName(segment_name)
            if existing:
                segmentation.RemoveSegment(existing)
            segment_id = segmentation.AddEmptySegment("", segment_name, list(_label_field(label, "color")))
            slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
                oriented, segmentation_node, segment_id,
                slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE, oriented.GetExtent())
            tag = terminology_tag(_terminology(label))
            if tag:
                segmentation.GetSegment(segment_id).SetTerminology(tag)
    finally:
        segmentation_node.EndModify(was_modifying)
    if reference_volume is not None:
        place_beside_in_hierarchy(scene, segmentation_node, reference_volume)
    return segmentation_node


def place_beside_in_hierarchy(scene, node, reference_node) -> None:
    """Put `node` under the same subject-hierarchy parent (study) as `reference_node`."""
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if hierarchy is None:
        return
    reference_item = hierarchy.GetItemByDataNode(reference_node)
    if not reference_item:
        return
    parent = hierarchy.GetItemParent(reference_item)
    item = hierarchy.GetItemByDataNode(node)
    if item:
        hierarchy.SetItemParent(item, parent)
    else:  # outside Slicer no plugin handler creates items for new nodes
        hierarchy.CreateItem(parent, node)


def label_map_from_segmentation(segmentation_node, reference_volume, segment_names: Sequence[str]) -> np.ndarray:
    """KJI label array on the reference volume's grid: segment i (1-based in `segment_names`) -> i."""
    segmentation = segmentation_node.GetSegmentation()
    return label_map_from_segment_ids(segmentation_node, reference_volume,
                                      [segmentation.GetSegmentIdBySegmentName(name) for name in segment_names])


def label_map_from_segment_ids(segmentation_node, reference_volume, segment_ids: Sequence[str]) -> np.ndarray:
    """KJI label array on the reference volume's grid: segment `segment_ids[i]` -> i + 1.

    The export's helper nodes (label map, its display node, a color table) are removed again.
    """
    scene = segmentation_node.GetScene()
    existing = {scene.GetNthNode(index).GetID() for index in range(scene.GetNumberOfNodes())}
    label_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "meddl-export")
    try:
        ids = vtk.vtkStringArray()
        for segment_id in segment_ids:
            ids.InsertNextValue(segment_id)
        slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            segmentation_node, ids, label_node, reference_volume)
        return np.array(slicer.util.arrayFromVolume(label_node), copy=True)
    finally:
        added = [scene.GetNthNode(index) for index in range(scene.GetNumberOfNodes())]
        for node in reversed([node for node in added if node.GetID() not in existing]):
            scene.RemoveNode(node)
