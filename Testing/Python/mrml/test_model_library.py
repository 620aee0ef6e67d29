"""The model library as Slicer drives it: jobs on the worker, the folder in Slicer's settings, removal."""

from __future__ import annotations

import pytest
from meddl.library import store
from meddl_testing import write_torchscript_model
from MedDLLib.jobs import JobState
from MedDLLib.model_library import library_rows, remove_model, slicer_models_dir, start_import, use_models_dir


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
