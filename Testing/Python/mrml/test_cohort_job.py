"""A cohort from the scene, a folder or DICOM series, run as one queued worker job: a status row per case, results
in the output folder and (optionally) in the scene, and a cancel that keeps the finished cases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import slicer
from meddl.image import Image
from meddl.io import read_image, write_image
from meddl_testing import band_volume, oblique_direction, write_band_model, write_dicom_series, write_state_dict_model
from MedDLLib.cohort_job import CohortJob
from MedDLLib.jobs import JobState
from MedDLLib.segmentations import label_map_from_segmentation
from MedDLLib.tables import rows_of_table_node
from MedDLLib.volumes import volume_node_from_image


def _band_image(shift: int) -> Image:
    return Image(np.roll(band_volume(), shift, axis=1), (0.9, 1.4, 2.2), (40.0, -12.0, 8.0), oblique_direction(0.35))


def _segments(node) -> list[str]:
    segmentation = node.GetSegmentation()
    return [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]


def test_volumes_checked_in_the_scene_are_segmented_as_the_single_job_does(scene, tmp_path):
    model = write_band_model(tmp_path)
    volumes = [volume_node_from_image(scene, _band_image(shift), name) for shift, name in ((0, "CT 1"), (3, "CT 2"))]
    before = [slicer.util.arrayFromVolume(node).copy() for node in volumes]
    job = CohortJob(scene, tmp_path / "out", str(model), "cpu", volumes=volumes, load_results=True)
    assert job.wait(120) is JobState.SUCCEEDED, job.engine.error
    result = job.finish()
    assert (result.done, result.failed) == (2, 0) and not job.folder.exists()
    assert [(row["case"], row["status"]) for row in rows_of_table_node(job.status_table)] == [
        ("CT_1", "done"), ("CT_2", "done")]
    for node, shift, original in zip(volumes, (0, 3), before):
        segmentation = scene.GetFirstNodeByName(f"{node.GetName()} test-unet")
        assert _segments(segmentation) == ["Liver", "Spleen", "Kidney"]
        exported = label_map_from_segmentation(segmentation, node, _segments(segmentation))
        np.testing.assert_array_equal(exported, _band_image(shift).array.astype(exported.dtype))
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), original)
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == [
        "CT_1.labels.json", "CT_1.nii.gz", "CT_2.labels.json", "CT_2.nii.gz", "summary.csv", "summary.json"]


def test_a_folder_with_a_broken_file_shows_the_failure_and_loads_only_the_finished_cases(scene, tmp_path):
    model = write_band_model(tmp_path)
    folder = tmp_path / "scans"
    folder.mkdir()
    write_image(_band_image(1), folder / "good.nrrd")
    (folder / "bad.nii.gz").write_bytes(b"truncated")
    count = scene.GetNumberOfNodes()
    job = CohortJob(scene, tmp_path / "out", str(model), "cpu", folder=folder, load_results=True)
    assert job.wait(120) is JobState.SUCCEEDED, job.engine.error
    result = job.finish()
    rows = {row["case"]: row for row in rows_of_table_node(job.status_table)}
    assert rows["good"]["status"] == "done" and rows["bad"]["status"] == "failed"
    assert "bad.nii.gz" in rows["bad"]["message"] and (result.done, result.failed) == (1, 1)
    added = [scene.GetNthNode(i).GetName() for i in range(count, scene.GetNumberOfNodes())]
    assert "good" in added and "good test-unet" in added and not any(name.startswith("bad") for name in added)


def test_cancelling_keeps_the_finished_cases_and_a_resumed_run_completes(scene, tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(8):
        write_image(Image(rng.normal(size=(72, 72, 72)).astype(np.float32)), folder / f"case{index}.nrrd")
    (tmp_path / "model").mkdir()
    model = write_state_dict_model(tmp_path / "model")
    out = tmp_path / "out"
    job = CohortJob(scene, out, str(model), "cpu", folder=folder)
    while job.state is JobState.RUNNING and not job.rows:
        job.wait(0.05)
    assert job.state is JobState.RUNNING, "the cohort ended before it could be cancelled"
    job.cancel()
    finished = json.loads((out / "summary.json").read_text())["records"]
    assert 1 <= len(finished) < 8 and all(record["status"] == "done" for record in finished)
    for record in finished:
        assert read_image(record["outputs"][0]).array.shape == (72, 72, 72)
    resumed = CohortJob(scene, out, str(model), "cpu", folder=folder, resume=True)
    assert resumed.wait(300) is JobState.SUCCEEDED, resumed.engine.error
    assert resumed.finish().done == 8
    assert len(list(out.glob("case*.nii.gz"))) == 8
    assert not [path.name for path in out.iterdir() if path.name.startswith(".meddl-")], "killed staging left"


def test_dicom_series_become_dicom_seg_objects_loaded_back_on_their_series(scene, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    real = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests" / "98892001" / "CT5N"
    model = write_band_model(tmp_path)
    series = {"head CT": sorted(str(path) for path in real.iterdir())}
    job = CohortJob(scene, tmp_path / "out", str(model), "cpu", dicom_series=series, output_format="dicom-seg",
                    load_results=True)
    assert job.wait(120) is JobState.SUCCEEDED, job.engine.error
    assert job.finish().done == 1 and (tmp_path / "out" / "head_CT.seg.dcm").exists()
    volume = scene.GetFirstNodeByName("head_CT")
    segmentation = scene.GetFirstNodeByName("head_CT test-unet")
    expected = np.clip(np.rint(read_image(real).array), 0, 3)
    exported = label_map_from_segmentation(segmentation, volume, ["Liver", "Spleen", "Kidney"])
    np.testing.assert_array_equal(exported, expected.astype(exported.dtype))


def test_one_source_of_cases_is_needed(scene, tmp_path):
    with pytest.raises(ValueError, match="one source of cases"):
        CohortJob(scene, tmp_path / "out", None, "cpu")
    with pytest.raises(ValueError, match="one source of cases"):
        CohortJob(scene, tmp_path / "out", None, "cpu", folder=tmp_path, dicom_series={"a": ["x"]})


def test_volumes_of_the_same_name_keep_their_own_results(scene, tmp_path):
    model = write_band_model(tmp_path)
    volumes = [volume_node_from_image(scene, _band_image(shift), "MR") for shift in (0, 5)]
    job = CohortJob(scene, tmp_path / "out", str(model), "cpu", volumes=volumes, load_results=True)
    assert job.wait(120) is JobState.SUCCEEDED, job.engine.error
    assert [case["case"] for case in job.finish().cases] == ["MR", "MR_2"]
    segmentations = scene.GetNodesByName("MR test-unet")
    assert segmentations.GetNumberOfItems() == 2
    for index, (node, shift) in enumerate(zip(volumes, (0, 5))):
        segmentation = segmentations.GetItemAsObject(index)
        exported = label_map_from_segmentation(segmentation, node, _segments(segmentation))
        np.testing.assert_array_equal(exported, _band_image(shift).array.astype(exported.dtype))


def test_a_folder_holding_two_series_loads_each_case_on_its_own_series(scene, tmp_path):
    model = write_band_model(tmp_path)
    series = tmp_path / "dicom" / "study"
    series.mkdir(parents=True)
    images = {"study_1": Image(band_volume(), (1.0, 1.5, 2.0)),
              "study_2": Image(np.roll(band_volume(), 4, axis=2), (1.0, 1.5, 2.0))}
    for number, image in enumerate(images.values(), start=1):
        write_dicom_series(image, series, series=f"1.2.826.0.1.3680043.2.1125.7.{number}")
    job = CohortJob(scene, tmp_path / "out", str(model), "cpu", folder=tmp_path / "dicom", load_results=True)
    assert job.wait(120) is JobState.SUCCEEDED, job.engine.error
    assert job.finish().done == 2
    for case, image in images.items():
        volume = scene.GetFirstNodeByName(case)
        segmentation = scene.GetFirstNodeByName(f"{case} test-unet")
        exported = label_map_from_segmentation(segmentation, volume, _segments(segmentation))
        np.testing.assert_array_equal(exported, image.array.astype(exported.dtype))
