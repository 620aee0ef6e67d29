"""The worker protocol: JSON-lines progress, success, failure with the worker's message, cancel, crash."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest
from meddl.cli.segment import SegmentRequest, SegmentResult
from meddl.io import write_image
from meddl_testing import blob_image, write_state_dict_model
from MedDLLib import jobs
from MedDLLib.jobs import EngineJob, JobFailed, JobState, engine_environment, python_executable, shut_down_workers


def segment(image, output, model=None) -> SegmentRequest:
    return SegmentRequest(str(image), str(output), str(model) if model else None)


@pytest.fixture
def files(tmp_path):
    model = write_state_dict_model(tmp_path, labels=2)
    image = write_image(blob_image(), tmp_path / "input.nrrd")
    return model, image, tmp_path / "labels.nrrd"


def test_success_reports_progress_and_outputs(files):
    model, image, output = files
    job = EngineJob(segment(str(image), str(output), model), device="cpu")
    seen = []
    while job.state is JobState.RUNNING:
        seen += job.poll()
        time.sleep(0.05)
    assert job.state is JobState.SUCCEEDED, job.error
    progress = [event["fraction"] for event in seen if event["event"] == "progress"]
    assert len(progress) > 3 and progress == sorted(progress)
    assert isinstance(job.result, SegmentResult) and job.finish() is job.result
    assert job.result.labels == str(output) and output.is_file()
    assert job.result.label_table.endswith("labels.labels.json")
    assert job.fraction == 1.0


def test_failure_carries_the_workers_message(files, tmp_path):
    model, _, output = files
    job = EngineJob(segment(str(tmp_path / "absent.nii.gz"), str(output), model), device="cpu")
    assert job.wait(120) is JobState.FAILED
    assert "input not found" in job.error and not output.exists()


def test_cancel_kills_the_worker(mni, tmp_path):
    output = tmp_path / "brain.nrrd"
    job = EngineJob(segment(str(mni["t1"]), str(output)), device="cpu")
    deadline = time.monotonic() + 120
    while not job.poll() and time.monotonic() < deadline:  # wait until the worker really runs
        time.sleep(0.05)
    job.cancel()
    assert job.state is JobState.CANCELLED and job.process.poll() is not None
    job.poll()
    assert job.state is JobState.CANCELLED and not output.exists()


def test_a_crashed_worker_is_a_failure_not_a_hang(mni, tmp_path):
    job = EngineJob(segment(str(mni["t1"]), str(tmp_path / "brain.nrrd")), device="cpu")
    time.sleep(0.5)
    os.kill(job.process.pid, signal.SIGKILL)  # as the kernel's OOM killer would
    assert job.wait(60) is JobState.FAILED
    assert "exited with code" in job.error


def test_cpu_device_hides_cuda(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert engine_environment("cpu")["CUDA_VISIBLE_DEVICES"] == "-1"
    assert "CUDA_VISIBLE_DEVICES" not in engine_environment("auto")
    assert "CUDA_VISIBLE_DEVICES" not in engine_environment("mps")


def test_worker_is_reused_and_survives_a_failed_job(files, tmp_path):
    model, image, output = files
    first = EngineJob(segment(str(image), str(output), model), device="cpu")
    assert first.wait(120) is JobState.SUCCEEDED
    failed = EngineJob(segment(str(tmp_path / "absent.nii"), str(output), model), device="cpu")
    assert failed.wait(120) is JobState.FAILED and "input not found" in failed.error
    again = EngineJob(segment(str(image), str(tmp_path / "again.nrrd"), model), device="cpu")
    assert again.wait(120) is JobState.SUCCEEDED
    assert first.process.pid == failed.process.pid == again.process.pid


def test_cancel_gives_the_next_job_a_fresh_worker(files, mni, tmp_path):
    model, image, output = files
    slow = EngineJob(segment(str(mni["t1"]), str(tmp_path / "brain.nrrd")), device="cpu")
    slow.cancel()
    assert slow.state is JobState.CANCELLED and slow.process.poll() is not None
    job = EngineJob(segment(str(image), str(output), model), device="cpu")
    assert job.wait(120) is JobState.SUCCEEDED and job.process.pid != slow.process.pid


def test_a_busy_worker_is_not_shared(files, mni, tmp_path):
    model, image, output = files
    slow = EngineJob(segment(str(mni["t1"]), str(tmp_path / "brain.nrrd")), device="cpu")
    quick = EngineJob(segment(str(image), str(output), model), device="cpu")
    assert quick.process.pid != slow.process.pid
    assert quick.wait(120) is JobState.SUCCEEDED and slow.wait(300) is JobState.SUCCEEDED


def test_shut_down_ends_idle_workers(files):
    model, image, output = files
    job = EngineJob(segment(str(image), str(output), model), device="cpu")
    assert job.wait(120) is JobState.SUCCEEDED, job.error
    shut_down_workers()
    assert job.process.wait(30) == 0


def test_a_failed_job_raises_the_workers_message_on_finish(files, tmp_path):
    model, _, output = files
    job = EngineJob(segment(tmp_path / "absent.nii.gz", output, model), device="cpu")
    assert job.wait(120) is JobState.FAILED
    with pytest.raises(JobFailed, match="input not found"):
        job.finish()


def test_outside_slicer_the_worker_runs_on_this_interpreter(monkeypatch):
    monkeypatch.setattr(sys, "executable", "/usr/bin/python3.11")
    assert python_executable() == "/usr/bin/python3.11"


def _fake_program(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    program = folder / name
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    return program


def test_inside_slicer_the_worker_runs_on_python_slicer_from_the_path(monkeypatch, tmp_path):
    launcher = _fake_program(tmp_path / "bin", "PythonSlicer")
    monkeypatch.setattr(sys, "executable", str(tmp_path / "elsewhere" / "SlicerApp-real"))
    monkeypatch.setenv("PATH", str(launcher.parent))
    assert python_executable() == str(launcher)


def test_inside_slicer_python_slicer_beside_the_executable(monkeypatch, tmp_path):
    launcher = _fake_program(tmp_path / "bin", "PythonSlicer")
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python-real"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert python_executable() == str(launcher)


def test_inside_slicer_without_python_slicer_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "SlicerApp-real"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(JobFailed, match="PythonSlicer"):
        python_executable()
    assert jobs.inside_slicer()
