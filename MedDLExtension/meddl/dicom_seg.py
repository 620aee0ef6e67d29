"""Segmentation results as DICOM Segmentation (SEG) objects, and back, through highdicom (`meddl[dicom]`).

A result is a label map on exactly the grid of a DICOM series plus the model card's labels. Choices made here:

- Segments: one per card label *present* in the label map, numbered 1..n in increasing label value. Labels the
  model did not find are left out, as Slicer's own DICOM SEG export leaves out empty segments, so that no reader
  meets a segment without frames. A label map with no labelled voxel at all is written as one empty segment (the
  card's first label, every frame kept, since a SEG needs at least one frame): it records that the model ran on
  the series and found nothing.
- Label values: non-consecutive values (1, 3, 7) become segment numbers 1..n; each segment keeps its value in its
  Segment Description ("MedDL label value 7") and its name in its Segment Label, so `read_dicom_seg` gives the
  original values back. For a SEG made elsewhere, the segment number stands for the value.
- Codes: the card's terminology (category, type and optional modifier, each {scheme, code, meaning}) as given;
  a label without terminology is coded as SCT 85756007 "Tissue" for both category and type (DICOM CID 7150 and
  CID 7151, and 3D Slicer's default for a new segment).
- Encoding: BINARY, with empty frames omitted (highdicom's default): one frame per segment per slice holding that
  segment. Slicer's DICOM SEG reader (QuantitativeReporting/dcmqi) reads these; it rebuilds a volume per segment
  from the frames present, while `read_dicom_seg` puts every frame back onto the source series' slices.
- Only series of single-frame images (CT, MR, PET slices) are supported as sources.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from . import __version__
from .errors import InputError, MeddlError, ModelError, OutputError
from .image import Image
from .models.card import Label
from .outputs import OutputSet, joined

INSTALL_HINT = 'DICOM SEG needs the optional packages highdicom and pydicom: pip install "meddl[dicom]"'
VALUE_NOTE = "MedDL label value {}"
VALUE_PATTERN = re.compile(r"MedDL label value (\d+)")
GENERIC_CODE = {"scheme": "SCT", "code": "85756007", "meaning": "Tissue"}  # CID 7150 and CID 7151 "Tissue"
LONG_STRING = 64  # the length limit of a DICOM LO value (names, descriptions)


def _modules(error: type[MeddlError]) -> tuple[Any, Any]:
    """highdicom and pydicom, imported only when DICOM SEG is used (they are an optional extra)."""
    try:
        import highdicom
        import pydicom
    except ImportError:
        raise error(INSTALL_HINT) from None
    return highdicom, pydicom


def _read_sources(source_files: Sequence[str | Path]) -> list[Any]:
    """The source images' headers (no pixels), checked to be one series of single-frame images."""
    _, pydicom = _modules(InputError)
    if not source_files:
        raise InputError("no source DICOM files given for the DICOM SEG")
    datasets = []
    for file in source_files:
        try:
            datasets.append(pydicom.dcmread(str(file), stop_before_pixels=True))
        except (OSError, pydicom.errors.InvalidDicomError) as error:
            raise InputError(f"cannot read the source DICOM file {file}: {error}") from None
    for file, dataset in zip(source_files, datasets):
        if int(dataset.get("NumberOfFrames") or 1) > 1:
            raise InputError(f"source DICOM file {file} is a multi-frame image; DICOM SEG output supports series "
                             "of single-frame images only")
        if "SOPInstanceUID" not in dataset or "Rows" not in dataset:
            raise InputError(f"source DICOM file {file} is not an image (no SOP instance UID or no rows)")
    series = {str(dataset.get("SeriesInstanceUID", "")) for dataset in datasets}
    if len(series) > 1:
        raise InputError(f"the source DICOM files belong to {len(series)} series; give the files of one series")
    return datasets


def _floats(dataset: Any, keyword: str) -> Optional[np.ndarray]:
    value = dataset.get(keyword)
    return None if value is None else np.array([float(number) for number in value])


def _check_grid(labels: Image, datasets: list[Any]) -> None:
    """Refuse a label map that is not on the source series' grid: its slice k must lie on source image k."""
    frames, rows, columns = labels.shape
    first = datasets[0]
    if (frames, rows, columns) != (len(datasets), int(first.Rows), int(first.Columns)):
        raise InputError(f"the label map ({frames} slices of {rows}x{columns}) is not on the source series' grid "
                         f"({len(datasets)} images of {first.Rows}x{first.Columns}); it cannot be stored as their "
                         "DICOM SEG")
    tolerance = max(1e-3, 0.01 * min(labels.spacing))  # 1% of a voxel, in mm
    matrix = labels.index_to_lps()
    for k, dataset in enumerate(datasets):
        position, orientation = _floats(dataset, "ImagePositionPatient"), _floats(dataset, "ImageOrientationPatient")
        spacing = _floats(dataset, "PixelSpacing")  # (between rows, between columns)
        if int(dataset.Rows) != rows or int(dataset.Columns) != columns:
            raise InputError(f"source image {k + 1} is {dataset.Rows}x{dataset.Columns}, not {rows}x{columns} like "
                             "the label map")
        if position is not None and np.abs(position - matrix[:3] @ [0, 0, k, 1]).max() > tolerance:
            raise InputError(f"slice {k} of the label map is not at the position of source image {k + 1} "
                             f"({np.round(position, 3).tolist()}): the label map is not on the source series' grid")
        if orientation is not None and not np.allclose(orientation, labels.direction[:, :2].T.ravel(), atol=1e-3):
            raise InputError(f"the label map's axes differ from the orientation of source image {k + 1}")
        if spacing is not None and not np.allclose(spacing, labels.spacing[1::-1], rtol=1e-3, atol=1e-4):
            raise InputError(f"the label map's pixel spacing {labels.spacing[:2]} differs from source image "
                             f"{k + 1}'s {spacing[::-1].tolist()}")


def _coded(entry: Any, what: str) -> Any:
    """A card's {scheme, code, meaning} as a highdicom coded concept."""
    hd, _ = _modules(OutputError)
    if not isinstance(entry, dict) or not all(entry.get(key) for key in ("scheme", "code", "meaning")):
        raise ModelError(f"the model card's {what} code needs a scheme, a code and a meaning; it is {entry!r}")
    return hd.sr.CodedConcept(str(entry["code"]), str(entry["scheme"]), str(entry["meaning"]))


def _segment(number: int, label: Label, algorithm: Any) -> Any:
    """The Segment Sequence item of one card label (number 1..n in the SEG)."""
    hd, _ = _modules(OutputError)
    terminology = label.terminology or {"category": GENERIC_CODE, "type": GENERIC_CODE}
    name = f"label {label.value}"
    red, green, blue = (min(max(float(component), 0.0), 1.0) * 255.0 for component in label.color)
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=(label.name or f"Label {label.value}")[:LONG_STRING],
        segmented_property_category=_coded(terminology.get("category"), f"{name} category"),
        segmented_property_type=_coded(terminology.get("type"), f"{name} type"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        display_color=hd.color.CIELabColor.from_rgb(red, green, blue),
    )
    if terminology.get("modifier"):
        description.SegmentedPropertyTypeModifierCodeSequence = [
            _coded(terminology["modifier"], f"{name} type modifier")]
    description.SegmentDescription = VALUE_NOTE.format(label.value)
    return description


def _segment_numbers(labels: Image, card_labels: Sequence[Label]) -> tuple[np.ndarray, list[Label]]:
    """The label map as segment numbers 1..n, and the card labels those numbers stand for."""
    if labels.array.ndim != 3 or not (np.issubdtype(labels.array.dtype, np.integer) or labels.array.dtype == bool):
        raise InputError(f"a DICOM SEG is made from an integer 3D label map, not {labels.array.dtype} "
                         f"{labels.array.shape}")
    array = labels.array.view(np.uint8) if labels.array.dtype == bool else labels.array
    by_value = {int(label.value): label for label in card_labels}
    if len(by_value) != len(card_labels) or any(value <= 0 for value in by_value):
        raise ModelError("the model card's label values must be distinct and positive (0 is background)")
    present = [int(value) for value in np.unique(array) if value != 0]
    unknown = [value for value in present if value not in by_value]
    if unknown:
        raise InputError(f"the label map holds value(s) {unknown} that are not among the model card's labels "
                         f"{sorted(by_value)}; no DICOM SEG was written")
    if not present:  # nothing found: one empty segment records that the model ran
        return np.zeros(labels.shape, np.uint8), [card_labels[0]]
    table = np.zeros(max(present) + 1, np.uint8 if len(present) < 256 else np.uint16)
    table[present] = np.arange(1, len(present) + 1)
    return table[array], [by_value[value] for value in present]


def _segmentation(datasets: list[Any], numbers: np.ndarray, segments: list[Any], model_name: str) -> Any:
    """The highdicom Segmentation of segment-number map `numbers` on the source images `datasets`."""
    hd, _ = _modules(OutputError)
    with warnings.catch_warnings():
        try:
            # the source's patient name is copied as it is; highdicom's doubts about its format are not ours
            warnings.filterwarnings("ignore", "The string .* is unlikely to represent the intended person name")
            return hd.seg.Segmentation(
                source_images=datasets, pixel_array=numbers, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=segments, series_instance_uid=hd.UID(), sop_instance_uid=hd.UID(),
                series_number=1000 + int(datasets[0].get("SeriesNumber") or 0) % 1000000, instance_number=1,
                manufacturer="MedDL", manufacturer_model_name=model_name[:LONG_STRING], software_versions=__version__,
                device_serial_number="0", series_description=f"MedDL {model_name}"[:LONG_STRING],
                content_description=f"segmentation by {model_name}"[:LONG_STRING],
                omit_empty_frames=bool(numbers.any()))  # an empty result keeps its frames: a SEG needs one
        except (ValueError, AttributeError) as error:  # e.g. a source image without a frame of reference
            raise InputError(f"cannot make a DICOM SEG of the series: {error}") from None


def write_dicom_seg(labels: Image, card_labels: Sequence[Label], source_files: Sequence[str | Path],
                    path: str | Path, model_name: str, outputs: Optional[OutputSet] = None) -> Path:
    """Write `labels` (a label map on the grid of the series `source_files`, in slice order, e.g. from
    `meddl.dicom.series_files`) as a BINARY DICOM SEG referencing that series, whole or not at all."""
    hd, _ = _modules(OutputError)
    from pydicom.sr.codedict import codes

    path = Path(path)
    if not card_labels:
        raise ModelError("the model card has no labels; a DICOM SEG needs at least one")
    datasets = _read_sources(source_files)
    _check_grid(labels, datasets)
    numbers, written = _segment_numbers(labels, card_labels)
    algorithm = hd.AlgorithmIdentificationSequence(name=model_name[:LONG_STRING],
                                                   family=codes.cid7162.ArtificialIntelligence, version=__version__)
    segments = [_segment(number, label, algorithm) for number, label in enumerate(written, start=1)]
    with joined(outputs) as staging:
        target = staging.staged(path)  # checked before the SEG is built
        seg = _segmentation(datasets, numbers, segments, model_name)
        try:
            seg.save_as(str(target))
        except OSError as error:
            raise OutputError(f"cannot write {path}: {error.strerror or error}") from None
    return path


def _concept(item: Any) -> dict[str, str]:
    return {"scheme": str(item.CodingSchemeDesignator), "code": str(item.CodeValue), "meaning": str(item.CodeMeaning)}


def _label_of(segment: Any) -> Label:
    """The card label a segment of a SEG stands for (its value from MedDL's note, else its segment number)."""
    hd, _ = _modules(InputError)
    found = VALUE_PATTERN.fullmatch(str(segment.get("SegmentDescription", "")))
    terminology = {"category": _concept(segment.SegmentedPropertyCategoryCodeSequence[0]),
                   "type": _concept(segment.SegmentedPropertyTypeCodeSequence[0])}
    if segment.get("SegmentedPropertyTypeModifierCodeSequence"):
        terminology["modifier"] = _concept(segment.SegmentedPropertyTypeModifierCodeSequence[0])
    color = (0.5, 0.5, 0.5)
    if segment.get("RecommendedDisplayCIELabValue"):
        rgb = hd.color.CIELabColor.from_dicom_value(segment.RecommendedDisplayCIELabValue).to_rgb(clip=True)
        color = tuple(component / 255.0 for component in rgb)
    value = int(found.group(1)) if found else int(segment.SegmentNumber)
    return Label(value, str(segment.get("SegmentLabel", "")), color, terminology)


def read_dicom_seg(path: str | Path, source_files: Sequence[str | Path]) -> tuple[np.ndarray, list[Label]]:
    """A BINARY DICOM SEG of the series `source_files` as a label map (source images, rows, columns) in the
    order of `source_files`, with the original label values, and the labels of its segments (name, value,
    colour, codes); what a Slicer loader and the round-trip tests use."""
    hd, pydicom = _modules(InputError)
    try:
        seg = hd.seg.segread(str(path))
    except (OSError, ValueError, AttributeError, KeyError, pydicom.errors.InvalidDicomError) as error:
        raise InputError(f"cannot read the DICOM SEG {path}: {error}") from None
    datasets = _read_sources(source_files)
    uids = [str(dataset.SOPInstanceUID) for dataset in datasets]
    referenced = {str(sop) for _, _, sop in seg.get_source_image_uids()}
    if not referenced & set(uids) or referenced - set(uids):
        raise InputError(f"the DICOM SEG {path} segments {len(referenced - set(uids))} image(s) that are not among "
                         "the source files given; give the files of the series it was made from")
    segments = [seg.get_segment_description(number) for number in seg.segment_numbers]
    labels = [_label_of(segment) for segment in segments]
    if len({label.value for label in labels}) != len(labels):  # not MedDL's notes: the numbers are the values
        labels = [Label(int(s.SegmentNumber), lb.name, lb.color, lb.terminology) for s, lb in zip(segments, labels)]
    try:
        numbers = seg.get_pixels_by_source_instance(uids, combine_segments=True, relabel=False,
                                                    assert_missing_frames_are_empty=True)
    except (ValueError, RuntimeError) as error:
        raise InputError(f"cannot read the DICOM SEG {path} as one label map: {error}") from None
    table = np.zeros(max(seg.segment_numbers) + 1, np.min_scalar_type(max(label.value for label in labels)))
    for segment, label in zip(segments, labels):
        table[int(segment.SegmentNumber)] = label.value
    return table[numbers], labels
