"""DICOM SEG output: label maps on real DICOM series (pydicom's own test series) written as SEG and read back."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from meddl.dicom import series_files
from meddl.errors import InputError, ModelError, OutputError
from meddl.image import Image
from meddl.io import read_image
from meddl.models.card import Label
from meddl.outputs import STAGING_PREFIX, OutputSet
from meddl_testing import write_dicom_series

hd = pytest.importorskip("highdicom")
pydicom = pytest.importorskip("pydicom")
from meddl.dicom_seg import read_dicom_seg, write_dicom_seg  # noqa: E402
from pydicom.sr.codedict import codes  # noqa: E402

DICOMDIR_TESTS = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests"
CT5N = DICOMDIR_TESTS / "98892001" / "CT5N"  # 5 axial CT slices of 16x16, 2.5 mm apart: one series
# 77654033/CT2 holds 4 slices of one CT series, one of them 200 mm away from the 3 contiguous others
CT2_CONTIGUOUS = ("17136", "17166", "17196")
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"

BRAIN = {"category": {"scheme": "SCT", "code": "123037004", "meaning": "Anatomical Structure"},
         "type": {"scheme": "SCT", "code": "12738006", "meaning": "Brain"}}
LEFT_KIDNEY = {"category": {"scheme": "SCT", "code": "123037004", "meaning": "Anatomical Structure"},
               "type": {"scheme": "SCT", "code": "64033007", "meaning": "Kidney"},
               "modifier": {"scheme": "SCT", "code": "7771000", "meaning": "Left"}}
CARD = [Label(1, "Brain", (0.25, 0.66, 0.86), BRAIN), Label(3, "Other tissue", (1.0, 0.5, 0.0)),
        Label(7, "Left kidney", (0.2, 0.8, 0.2), LEFT_KIDNEY)]


def ct2_contiguous(folder: Path) -> Path:
    """The 3 evenly spaced slices of 77654033/CT2, copied into a folder of their own."""
    folder.mkdir()
    for name in CT2_CONTIGUOUS:
        shutil.copy(DICOMDIR_TESTS / "77654033" / "CT2" / name, folder / name)
    return folder


@pytest.fixture(params=["CT5N", "CT2"])
def series(request, tmp_path) -> Path:
    return CT5N if request.param == "CT5N" else ct2_contiguous(tmp_path / "ct2")


def thresholds(image: Image) -> np.ndarray:
    """Labels 1 and 3 from the real intensities (label 7 of the card absent), in uint16."""
    middle = np.median(image.array)
    labels = np.zeros(image.shape, np.uint16)
    labels[image.array > middle + 20] = 1
    labels[image.array < middle - 20] = 3
    assert {1, 3} <= set(np.unique(labels).tolist()) and 0 in labels
    return labels


def written_seg(folder: Path, out: Path) -> tuple[Image, list[str], Path]:
    image = read_image(folder)
    files = series_files(folder)
    path = write_dicom_seg(image.with_array(thresholds(image)), CARD, files, out / "seg.dcm", "Test model")
    return image, files, path


def assert_nothing_written(folder: Path) -> None:
    leftovers = [p.name for p in folder.iterdir() if p.name == "seg.dcm" or p.name.startswith(STAGING_PREFIX)]
    assert leftovers == []


def test_series_files_are_the_image_slices_in_order():
    image = read_image(CT5N)
    files = series_files(CT5N)
    assert len(files) == image.shape[0] == 5
    assert files != sorted(files)  # GDCM orders by position, not by name
    for k, file in enumerate(files):
        position = np.array(pydicom.dcmread(file, stop_before_pixels=True).ImagePositionPatient, float)
        np.testing.assert_allclose(position, (image.index_to_lps() @ [0, 0, k, 1])[:3], atol=1e-4)


def test_series_files_refuses_a_folder_of_two_series(tmp_path):
    mixed = ct2_contiguous(tmp_path / "mixed")
    for file in CT5N.iterdir():
        shutil.copy(file, mixed / file.name)
    with pytest.raises(InputError, match="holds 2 DICOM series"):
        series_files(mixed)


def test_round_trip_gives_the_label_map_back(series, tmp_path):
    image, files, path = written_seg(series, tmp_path)
    labels, segments = read_dicom_seg(path, files)
    assert labels.shape == image.shape
    np.testing.assert_array_equal(labels, thresholds(image))
    assert [(s.value, s.name) for s in segments] == [(1, "Brain"), (3, "Other tissue")]  # label 7 is absent
    assert segments[0].terminology == BRAIN
    np.testing.assert_allclose(segments[0].color, CARD[0].color, atol=2 / 255)
    np.testing.assert_allclose(segments[1].color, CARD[1].color, atol=2 / 255)


def test_seg_references_the_source_series(tmp_path):
    _, files, path = written_seg(CT5N, tmp_path)
    sources = [pydicom.dcmread(file, stop_before_pixels=True) for file in files]
    seg = pydicom.dcmread(path)
    assert seg.SOPClassUID == SEGMENTATION_STORAGE and seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    assert seg.SeriesInstanceUID not in {s.SeriesInstanceUID for s in sources}
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert {item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence} == \
        {s.SOPInstanceUID for s in sources}
    assert (seg.Manufacturer, seg.SeriesDescription) == ("MedDL", "MedDL Test model")
    positions = {s.SOPInstanceUID: [float(v) for v in s.ImagePositionPatient] for s in sources}
    for frame in seg.PerFrameFunctionalGroupsSequence:  # each frame lies on the source image it names
        source = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        np.testing.assert_allclose([float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient],
                                   positions[source], atol=1e-3)


def test_segments_carry_names_values_and_snomed_codes(tmp_path):
    _, _, path = written_seg(CT5N, tmp_path)
    seg = pydicom.dcmread(path)
    brain, other = seg.SegmentSequence
    assert (brain.SegmentNumber, brain.SegmentLabel, brain.SegmentDescription) == (1, "Brain", "MedDL label value 1")
    assert (other.SegmentNumber, other.SegmentLabel, other.SegmentDescription) == \
        (2, "Other tissue", "MedDL label value 3")
    category, kind = brain.SegmentedPropertyCategoryCodeSequence[0], brain.SegmentedPropertyTypeCodeSequence[0]
    assert (category.CodingSchemeDesignator, category.CodeValue) == ("SCT", "123037004")
    assert (kind.CodingSchemeDesignator, kind.CodeValue, kind.CodeMeaning) == ("SCT", "12738006", "Brain")
    # no terminology on the card: Tissue / Tissue, as the DICOM standard's CID 7150 and 7151 code it
    tissue = (codes.cid7150.Tissue.value, codes.cid7150.Tissue.scheme_designator, codes.cid7150.Tissue.meaning)
    assert codes.cid7151.Tissue == codes.cid7150.Tissue
    for sequence in (other.SegmentedPropertyCategoryCodeSequence, other.SegmentedPropertyTypeCodeSequence):
        assert (sequence[0].CodeValue, sequence[0].CodingSchemeDesignator, sequence[0].CodeMeaning) == tissue
    algorithm = brain.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "Test model" and brain.SegmentAlgorithmType == "AUTOMATIC"
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == codes.cid7162.ArtificialIntelligence.value
    read = hd.seg.segread(path)
    assert read.segment_numbers == [1, 2] and read.number_of_segments == 2


def test_modifier_codes_round_trip(tmp_path):
    image = read_image(CT5N)
    files = series_files(CT5N)
    kidney = (image.array > np.median(image.array)).astype(np.uint8) * 7
    path = write_dicom_seg(image.with_array(kidney), CARD, files, tmp_path / "seg.dcm", "Test model")
    labels, segments = read_dicom_seg(path, files)
    np.testing.assert_array_equal(labels, kidney)
    assert [(s.value, s.name, s.terminology) for s in segments] == [(7, "Left kidney", LEFT_KIDNEY)]
    assert codes.SCT.Kidney.value == "64033007" and codes.SCT.Left.value == "7771000"


def test_an_empty_result_is_written_as_one_empty_segment(tmp_path):
    image = read_image(CT5N)
    files = series_files(CT5N)
    path = write_dicom_seg(image.with_array(np.zeros(image.shape, np.uint8)), CARD, files, tmp_path / "seg.dcm",
                           "Test model")
    labels, segments = read_dicom_seg(path, files)
    assert labels.shape == image.shape and not labels.any()
    assert [s.value for s in segments] == [1]
    assert pydicom.dcmread(path).NumberOfFrames == len(files)


def test_oblique_series_round_trip(tmp_path, oblique_image):
    """Oblique, anisotropic geometry (a synthetic series given the frame of reference a SEG needs)."""
    folder = tmp_path / "oblique"
    folder.mkdir()
    for file in write_dicom_series(oblique_image, folder):
        dataset = pydicom.dcmread(file)
        dataset.FrameOfReferenceUID = "1.2.826.0.1.3680043.2.1125.1.2"
        dataset.save_as(file)
    image, files = read_image(folder), series_files(folder)
    labels = (image.array.astype(int) % 3 == 0).astype(np.uint8) * 3
    path = write_dicom_seg(image.with_array(labels), CARD, files, tmp_path / "seg.dcm", "Test model")
    np.testing.assert_array_equal(read_dicom_seg(path, files)[0], labels)
    orientation = pydicom.dcmread(path).SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
    np.testing.assert_allclose([float(v) for v in orientation.ImageOrientationPatient],
                               image.direction[:, :2].T.ravel(), atol=1e-6)


def test_a_label_map_off_the_source_grid_is_refused(tmp_path):
    image = read_image(CT5N)
    files = series_files(CT5N)
    labels = thresholds(image)
    shifted = Image(labels, image.spacing, np.add(image.origin, (0, 0, 1.0)), image.direction)
    attempts = {
        "is not on the source series' grid": (Image(labels[1:], image.spacing, image.origin, image.direction), files),
        "is not at the position": (shifted, files),
        "not at the position of source image 1": (image.with_array(labels), files[::-1]),
        "pixel spacing": (Image(labels, (0.5, 0.5, 2.5), image.origin, image.direction), files),
    }
    for message, (label_map, sources) in attempts.items():
        with pytest.raises(InputError, match=message):
            write_dicom_seg(label_map, CARD, sources, tmp_path / "seg.dcm", "Test model")
    assert_nothing_written(tmp_path)


def test_a_label_value_not_on_the_card_is_refused(tmp_path):
    image = read_image(CT5N)
    labels = thresholds(image)
    labels[0, 0, 0] = 2
    with pytest.raises(InputError, match=r"value\(s\) \[2\] that are not among the model card's labels"):
        write_dicom_seg(image.with_array(labels), CARD, series_files(CT5N), tmp_path / "seg.dcm", "Test model")
    assert_nothing_written(tmp_path)


def test_incomplete_terminology_is_a_model_error(tmp_path):
    image = read_image(CT5N)
    card = [Label(1, "Brain", (1, 0, 0), {"category": BRAIN["category"], "type": {"scheme": "SCT"}}),
            Label(3, "Other", (0, 1, 0))]
    with pytest.raises(ModelError, match="label 1 type code needs a scheme, a code and a meaning"):
        write_dicom_seg(image.with_array(thresholds(image)), card, series_files(CT5N), tmp_path / "seg.dcm", "m")


def test_a_failed_write_leaves_nothing_and_keeps_the_old_file(tmp_path, monkeypatch):
    image = read_image(CT5N)
    (tmp_path / "seg.dcm").write_bytes(b"previous result")

    def broken_save(self, target, *args, **kwargs):
        Path(target).write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(hd.seg.Segmentation, "save_as", broken_save)
    with pytest.raises(OutputError, match="No space left on device"):
        write_dicom_seg(image.with_array(thresholds(image)), CARD, series_files(CT5N), tmp_path / "seg.dcm", "m")
    assert (tmp_path / "seg.dcm").read_bytes() == b"previous result"
    assert [p.name for p in tmp_path.iterdir()] == ["seg.dcm"]


def test_written_with_the_jobs_other_outputs(tmp_path):
    image = read_image(CT5N)
    with OutputSet() as outputs:
        path = write_dicom_seg(image.with_array(thresholds(image)), CARD, series_files(CT5N), tmp_path / "seg.dcm",
                               "m", outputs=outputs)
        assert not path.exists()
        outputs.commit()
    assert pydicom.dcmread(path).SOPClassUID == SEGMENTATION_STORAGE


def test_a_source_without_frame_of_reference_is_refused(tmp_path):
    """pydicom-data's real CT slice has no frame of reference UID, which a SEG of it would need."""
    data_store = pytest.importorskip("data_store")
    folder = tmp_path / "ct"
    folder.mkdir()
    shutil.copy(Path(data_store.__file__).parent / "data" / "693_UNCR.dcm", folder)
    image = read_image(folder)
    with pytest.raises(InputError, match="Frame Of Reference UID"):
        write_dicom_seg(image.with_array(np.ones(image.shape, np.uint8)), CARD, series_files(folder),
                        tmp_path / "seg.dcm", "m")
    assert_nothing_written(tmp_path)


def test_reading_against_another_series_is_refused(tmp_path):
    _, _, path = written_seg(CT5N, tmp_path)
    with pytest.raises(InputError, match="not among the source files"):
        read_dicom_seg(path, series_files(ct2_contiguous(tmp_path / "ct2")))
    with pytest.raises(InputError, match="cannot read the DICOM SEG"):
        read_dicom_seg(series_files(CT5N)[0], series_files(CT5N))


def test_without_highdicom_the_message_says_what_to_install(tmp_path, monkeypatch):
    image = read_image(CT5N)
    monkeypatch.setitem(sys.modules, "highdicom", None)
    with pytest.raises(OutputError, match=r'pip install "meddl\[dicom\]"'):
        write_dicom_seg(image.with_array(thresholds(image)), CARD, series_files(CT5N), tmp_path / "seg.dcm", "m")
    with pytest.raises(InputError, match=r'pip install "meddl\[dicom\]"'):
        read_dicom_seg(tmp_path / "seg.dcm", series_files(CT5N))
