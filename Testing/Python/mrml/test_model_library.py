"""The model library as Slicer drives it: jobs on the worker, the folder in Slicer's settings, removal."""

from __future__ import annotations

import pytest
from meddl.io import read_image
from meddl.models import store
from meddl.tasks import TASKS
from meddl_testing import write_task_models, write_torchscript_model
from MedDLLib.classification_job import ClassificationJob
from MedDLLib.enhancement_job import EnhancementJob
from MedDLLib.jobs import JobState, finish_within
from MedDLLib.model_library import library_rows, remove_model, slicer_models_dir, start_import, use_models_dir
from MedDLLib.registration_job import RegistrationJob
from MedDLLib.segmentation_job import SegmentationJob
from MedDLLib.volumes import volume_node_from_image


@pytest.fixture
def slicer_settings(tmp_path, monkeypatch):
    monkeypatch.delenv("MEDDL_MODELS_DIR", raising=False)
    folder = use_models_dir(slicer_models_dir(str(tmp_path / "settings" / "Slicer.ini")))
    yield folder
    monkeypatch.delenv("MEDDL_MODELS_DIR", raising=False)


def test_import_with_form_then_listed_then_removed(tmp_path, slicer_settings):
    assert slicer_settings == tmp_path / "settings" / "MedDL" / "models"
    path = write_torchscript_model(tmp_path)
    path.with_suffix(".json").unlink()
    job = start_import(path, "my-model", {"task": "segmentation", "channels": 1, "labels": "1:Liver",
                                          "license": "CC-BY-4.0", "roi": "16,16,16"})
    assert job.wait(120) is JobState.SUCCEEDED, job.error
    assert (slicer_settings / "my-model" / "model.ts").is_file()  # the worker used Slicer's model folder
    row = next(row for row in library_rows("segmentation", installed_only=True) if row.id == "my-model")
    assert row.license == "CC-BY-4.0" and row.origin == "imported"
    assert remove_model("my-model") > 0 and not (slicer_settings / "my-model").exists()


def test_failed_import_reports_the_missing_fields(tmp_path, slicer_settings):
    path = write_torchscript_model(tmp_path)
    path.with_suffix(".json").unlink()
    job = start_import(path, "incomplete")
    assert job.wait(120) is JobState.FAILED and "missing task, input.channels, labels, license" in job.error
    assert store.list_installed() == []
    assert "incomplete" not in {row.id for row in library_rows("segmentation")}


@pytest.fixture(scope="module")
def task_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("task-models")
    return {**write_task_models(folder), "folder": folder}


def test_a_model_of_every_task_imports_lists_under_its_task_and_runs_in_the_scene(task_models, slicer_settings,
                                                                                  scene):
    """What the Enhancement and Registration panels could not do: their models enter the library."""
    for task in TASKS:
        job = start_import(task_models[task], f"my-{task}")
        assert job.wait(120) is JobState.SUCCEEDED, (task, job.error)
        listed = {other: {row.id for row in library_rows(other)} for other in TASKS}
        assert [other for other, ids in listed.items() if f"my-{task}" in ids] == [task]
    folder = task_models["folder"]
    noisy, fixed, moving = (volume_node_from_image(scene, read_image(folder / f"{name}.nii.gz"), name)
                            for name in ("noisy", "fixed", "moving"))
    segmentation = finish_within(SegmentationJob(scene, noisy, "my-segmentation", "cpu"), 120, "segmentation")
    assert segmentation.GetSegmentation().GetNumberOfSegments() >= 1
    table = finish_within(ClassificationJob(scene, [noisy], "my-classification", "cpu"), 120, "classification")
    assert table.GetTable().GetNumberOfRows() == 1
    denoised = finish_within(EnhancementJob(scene, noisy, "denoise", "my-enhancement", "cpu"), 120, "enhancement")
    assert denoised.GetAttribute("MedDL.method") == "den"
    outputs = finish_within(RegistrationJob(scene, fixed, moving, model="my-registration", device="cpu"), 300,
                            "registration")
    assert outputs.transform is not None and outputs.warped_volume is not None
