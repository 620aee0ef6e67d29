"""A segmentation node as a DICOM Segmentation object of the DICOM series its volume was loaded from: the segments'
names, colours and terminology codes kept, the source series referenced, ready for Slicer's DICOM database."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from meddl.errors import InputError
from meddl.models.card import Label

from .segmentations import label_map_from_segment_ids
from .volumes import image_from_volume_node

INSTANCE_UIDS = "DICOM.instanceUIDs"  # the attribute Slicer's DICOM scalar volume plugin sets on loaded volumes


def source_files_of_volume(volume_node, database) -> list[str]:
    """The DICOM files a volume node was loaded from, in its slice order (the database finds each instance)."""
    uids = (volume_node.GetAttribute(INSTANCE_UIDS) or "").split()
    if not uids:
        raise InputError(f"volume {volume_node.GetName()!r} was not loaded from DICOM (it has no "
                         f"{INSTANCE_UIDS}); a DICOM SEG needs the source series")
    files = [database.fileForInstance(uid) for uid in uids]
    missing = [uid for uid, file in zip(uids, files) if not file]
    if missing:
        raise InputError(f"{len(missing)} source image(s) of {volume_node.GetName()!r} are not in the DICOM "
                         "database any more")
    return files


def _parse_code(text: str) -> dict[str, str] | None:
    scheme, code, meaning = (text.split("^") + ["", "", ""])[:3]
    return {"scheme": scheme, "code": code, "meaning": meaning} if scheme and code else None


def segment_labels(segmentation_node, segment_ids: Sequence[str]) -> list[Label]:
    """Labels 1..n for the segments: name, colour, and the category/type codes of the segment's terminology."""
    segmentation = segmentation_node.GetSegmentation()
    labels = []
    for value, segment_id in enumerate(segment_ids, start=1):
        segment = segmentation.GetSegment(segment_id)
        fields = (segment.GetTerminology() or "").split("~")
        codes = {"category": _parse_code(fields[1]), "type": _parse_code(fields[2])} if len(fields) > 2 else {}
        terminology: dict[str, Any] | None = codes if all(codes.values()) and codes else None
        labels.append(Label(value, segment.GetName(), tuple(segment.GetColor()), terminology))
    return labels


def export_dicom_seg(segmentation_node, volume_node, source_files: Sequence[str], path: str | Path,
                     segment_ids: Sequence[str] | None = None, model_name: str = "MedDL") -> Path:
    """Write the segments (all by default) as a DICOM SEG on `volume_node`'s series (`source_files` in its slice
    order); the scene is only read."""
    from meddl.dicom_seg import write_dicom_seg

    segmentation = segmentation_node.GetSegmentation()
    ids = list(segment_ids or segmentation.GetSegmentIDs())
    if not ids:
        raise InputError(f"segmentation {segmentation_node.GetName()!r} has no segments to export")
    image = image_from_volume_node(volume_node)
    labels = image.with_array(label_map_from_segment_ids(segmentation_node, volume_node, ids))
    return write_dicom_seg(labels, segment_labels(segmentation_node, ids), source_files, path, model_name)
