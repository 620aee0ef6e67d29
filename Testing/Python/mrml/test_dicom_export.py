"""A segmentation node exported as a DICOM SEG of the real DICOM series its volume came from, read back equal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from meddl.dicom import series_files
from meddl.errors import InputError
from meddl.io import read_image
from meddl.models.card import Label
from MedDLLib.dicom_export import INSTANCE_UIDS, export_dicom_seg, source_files_of_volume
from MedDLLib.segmentations import apply_label_map
from MedDLLib.volumes import volume_node_from_image

pydicom = pytest.importorskip("pydicom")
CT5N = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests" / "98892001" / "CT5N"


class FileIndex:
    """What the export asks of Slicer's DICOM database (ctkDICOMDatabase.fileForInstance), over real files."""

    def __init__(self, files: list[str]) -> None:
        self.files = {str(pydicom.dcmread(file, stop_before_pixels=True).SOPInstanceUID): file for file in files}

    def fileForInstance(self, uid: str) -> str:  # noqa: N802 (ctkDICOMDatabase's name)
        return self.files.get(uid, "")


def test_a_segmentation_of_a_dicom_volume_round_trips_through_dicom_seg(scene, tmp_path):
    from meddl.dicom_seg import read_dicom_seg

    image = read_image(CT5N)
    files = series_files(CT5N)
    volume = volume_node_from_image(scene, image, "CT")
    index = FileIndex(files)
    volume.SetAttribute(INSTANCE_UIDS, " ".join(index.files))
    low, high = np.percentile(image.array, [40, 80])
    labels = (image.array > low).astype(np.uint8) + (image.array > high)
    kidney = {"category": {"scheme": "SCT", "code": "123037004", "meaning": "Anatomical Structure"},
              "type": {"scheme": "SCT", "code": "64033007", "meaning": "Kidney"}}
    table = [Label(1, "Soft tissue", (0.8, 0.5, 0.4)), Label(2, "Kidney", (0.7, 0.4, 0.3), kidney)]
    node = apply_label_map(scene, image.with_array(labels), table, volume)
    count = scene.GetNumberOfNodes()
    assert source_files_of_volume(volume, index) == list(index.files.values())
    path = export_dicom_seg(node, volume, source_files_of_volume(volume, index), tmp_path / "ct.seg.dcm")
    back, segments = read_dicom_seg(path, files)
    np.testing.assert_array_equal(back, labels)
    assert [(s.name, s.terminology["type"]["code"]) for s in segments] == [
        ("Soft tissue", "85756007"), ("Kidney", "64033007")]  # no terminology: the generic "Tissue" code
    assert scene.GetNumberOfNodes() == count


def test_a_volume_not_loaded_from_dicom_is_refused(scene):
    volume = volume_node_from_image(scene, read_image(CT5N), "CT")
    with pytest.raises(InputError, match="not loaded from DICOM"):
        source_files_of_volume(volume, FileIndex([]))
    volume.SetAttribute(INSTANCE_UIDS, "1.2.3 1.2.4")
    with pytest.raises(InputError, match="not in the DICOM database"):
        source_files_of_volume(volume, FileIndex([]))
