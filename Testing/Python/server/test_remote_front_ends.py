"""The front ends on a server: `meddl COMMAND ... --server URL` and Slicer's jobs with the Compute setting on a
server give what they give locally."""

from __future__ import annotations

import json

import numpy as np
import pytest
from headless_slicer import HeadlessScene
from meddl.cli import main
from meddl.io import read_image
from meddl_testing import one_error_line
from MedDLLib import compute
from MedDLLib.jobs import JobState
from MedDLLib.segmentation_job import SegmentationJob
from MedDLLib.segmentations import label_map_from_segmentation
from MedDLLib.volumes import volume_node_from_image


def test_the_command_line_on_a_server_writes_what_it_writes_locally(model_id, server, alice, band_image,
                                                                     band_model_file, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDDL_API_KEY", alice)
    remote, local = tmp_path / "remote.nii.gz", tmp_path / "local.nii.gz"
    assert main(["segment", str(band_image), str(remote), "--model", model_id, "--server", server.url,
                 "--progress", "none"]) == 0
    assert main(["segment", str(band_image), str(local), "--model", str(band_model_file), "--progress", "none"]) == 0
    np.testing.assert_array_equal(read_image(remote).array, read_image(local).array)
    assert read_image(remote).same_grid(read_image(local))
    names = [label["name"] for label in json.loads((tmp_path / "remote.labels.json").read_text())["labels"]]
    assert names == ["Liver", "Spleen", "Kidney"]


def test_the_key_comes_from_a_file_or_the_environment_never_the_command_line(model_id, server, alice, band_image,
                                                                             tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MEDDL_API_KEY", raising=False)
    output = tmp_path / "out.nii.gz"
    arguments = ["segment", str(band_image), str(output), "--model", model_id, "--server", server.url,
                 "--progress", "none"]
    one_error_line(capsys, main(arguments), 3, "needs an API key")
    key_file = tmp_path / "key.txt"
    key_file.write_text(alice + "\n")
    assert main([*arguments, "--api-key-file", str(key_file)]) == 0 and output.exists()
    assert alice not in capsys.readouterr().err
    unreachable = [*arguments[:-4], "--server", "http://127.0.0.1:9", "--progress", "none", "--api-key-file",
                   str(key_file)]
    one_error_line(capsys, main(unreachable), 6, "cannot reach the MedDL server at http://127.0.0.1:9")


@pytest.mark.parametrize("arguments, words", [
    (["--batch", "IN", "--out", "OUT"], "runs on this computer only"),
    (["IN", "OUT.nii.gz", "--output-format", "nrrd"], "--output-format: not available with --server"),
])
def test_what_a_server_cannot_run_is_refused_before_anything_is_sent(model_id, server, alice, band_image, tmp_path,
                                                                     monkeypatch, capsys, arguments, words):
    monkeypatch.setenv("MEDDL_API_KEY", alice)
    arguments = [str(band_image) if a == "IN" else str(tmp_path / a) if a.startswith("OUT") else a for a in arguments]
    code = main(["segment", *arguments, "--model", model_id, "--server", server.url, "--progress", "none"])
    one_error_line(capsys, code, 2, words)


def test_train_options_a_request_cannot_carry_are_refused_not_dropped(server, alice, band_image, monkeypatch,
                                                                      capsys, tmp_path):
    monkeypatch.setenv("MEDDL_API_KEY", alice)
    code = main(["train", "--images", str(band_image), "--labels", str(band_image), "--label-names", "1:A",
                 "--out", str(tmp_path / "bundle"), "--batch-size", "4", "--server", server.url])
    one_error_line(capsys, code, 2, "--batch-size: not available with --server")


def test_slicer_jobs_run_on_the_server_chosen_in_the_compute_setting(model_id, server, alice, band_image,
                                                                      band_model_file):
    headless = HeadlessScene()
    image = read_image(band_image)
    volume = volume_node_from_image(headless.scene, image, "bands")
    local = SegmentationJob(headless.scene, volume, str(band_model_file), "cpu")
    assert local.wait(120) is JobState.SUCCEEDED, local.engine.error
    expected = label_map_from_segmentation(local.finish(), volume, ["Liver", "Spleen", "Kidney"])
    compute.use_server(server.url, alice)
    try:
        assert "***" in repr(compute.current_compute()) and alice not in repr(compute.current_compute())
        job = SegmentationJob(headless.scene, volume, model_id, "cpu")
        assert isinstance(job.engine, compute.RemoteEngineJob)
        assert job.wait(120) is JobState.SUCCEEDED, job.engine.error
        node = job.finish()
        np.testing.assert_array_equal(label_map_from_segmentation(node, volume, ["Liver", "Spleen", "Kidney"]),
                                      expected)
        count = headless.scene.GetNumberOfNodes()
        cancelled = SegmentationJob(headless.scene, volume, model_id, "cpu")
        cancelled.cancel()
        assert cancelled.state is JobState.CANCELLED and headless.scene.GetNumberOfNodes() == count
        assert not cancelled.folder.exists()
        failing = SegmentationJob(headless.scene, volume, "no-such-model", "cpu")
        assert failing.wait(120) is JobState.FAILED and "no-such-model" in failing.engine.error
    finally:
        compute.use_this_computer()
    again = SegmentationJob(headless.scene, volume, str(band_model_file), "cpu")
    assert type(again.engine) is type(local.engine) and again.wait(120) is JobState.SUCCEEDED
