"""`meddl segment` on the command line: outputs, progress, and a clear error and exit code for each failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from meddl.cli import main
from meddl.io import read_image, write_image
from meddl_testing import blob_image, write_state_dict_model


@pytest.fixture
def model_path(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    return write_state_dict_model(folder, labels=2)


@pytest.fixture
def input_path(tmp_path):
    return write_image(blob_image(), tmp_path / "input.nrrd")


def test_segment_writes_labels_and_names(tmp_path, model_path, input_path, capsys):
    output = tmp_path / "labels.nii.gz"
    assert main(["segment", str(input_path), str(output), "--model", str(model_path), "--device", "cpu"]) == 0
    assert read_image(output).same_grid(read_image(input_path))
    table = json.loads((tmp_path / "labels.labels.json").read_text())
    assert [label["name"] for label in table["labels"]] == ["Label 1", "Label 2"]
    assert "100.0%" in capsys.readouterr().err  # the terminal progress bar


def test_json_progress_protocol(tmp_path, model_path, input_path, capsys):
    output = tmp_path / "labels.nrrd"
    assert main(["segment", str(input_path), str(output), "--model", str(model_path), "--progress", "json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[0]["event"] == "progress" and events[-1]["event"] == "done"
    assert events[-1]["labels"] == str(output)
    fractions = [e["fraction"] for e in events if e["event"] == "progress"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def _run(args, tmp_path):
    """Run the real command in a subprocess and return (exit code, stderr, files left in tmp_path/out)."""
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    process = subprocess.run([sys.executable, "-m", "meddl", *args], capture_output=True, text=True,
                             env={**os.environ, "CUDA_VISIBLE_DEVICES": "-1"})
    return process.returncode, process.stderr, sorted(p.name for p in out.iterdir())


def test_missing_input_exit_code(tmp_path, model_path):
    code, err, files = _run(["segment", str(tmp_path / "nope.nii"), str(tmp_path / "out/x.nii.gz"),
                             "--model", str(model_path)], tmp_path)
    assert code == 3 and "input not found" in err and files == []


def test_4d_input_exit_code(tmp_path, model_path):
    path = tmp_path / "4d.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.float32), np.eye(4)), str(path))
    code, err, files = _run(["segment", str(path), str(tmp_path / "out/x.nii.gz"), "--model", str(model_path)],
                            tmp_path)
    assert code == 3 and "3D volume is needed" in err and files == []


def test_all_nan_input_exit_code(tmp_path, model_path):
    path = write_image(blob_image().with_array(np.full((24, 20, 28), np.nan, np.float32)), tmp_path / "nan.nrrd")
    code, err, files = _run(["segment", str(path), str(tmp_path / "out/x.nii.gz"), "--model", str(model_path)],
                            tmp_path)
    assert code == 3 and "all NaN or Inf" in err and files == []


def test_corrupt_model_exit_code(tmp_path, model_path, input_path):
    model_path.write_bytes(b"broken")
    code, err, files = _run(["segment", str(input_path), str(tmp_path / "out/x.nii.gz"), "--model", str(model_path)],
                            tmp_path)
    assert code == 4 and "corrupt" in err and files == []


def test_unknown_model_exit_code(tmp_path, input_path):
    code, err, _ = _run(["segment", str(input_path), str(tmp_path / "out/x.nii.gz"), "--model", "no-such-model"],
                        tmp_path)
    assert code == 4 and "model not found" in err and "deepbet-brain-extraction" in err


def test_unwritable_output_exit_code(tmp_path, model_path, input_path):
    code, err, files = _run(["segment", str(input_path), str(tmp_path / "out/missing/x.nii.gz"),
                             "--model", str(model_path)], tmp_path)
    assert code == 5 and "does not exist" in err and files == []
    (tmp_path / "out" / "file").write_text("x")  # a parent that is a file: unwritable for root too
    code, err, files = _run(["segment", str(input_path), str(tmp_path / "out/file/x.nii.gz"),
                             "--model", str(model_path)], tmp_path)
    assert code == 5 and "is a file, not a folder" in err and files == ["file"]


def test_unavailable_device_exit_code(tmp_path, model_path, input_path):
    code, err, files = _run(["segment", str(input_path), str(tmp_path / "out/x.nii.gz"), "--model", str(model_path),
                             "--device", "cuda"], tmp_path)
    assert code == 6 and "CUDA" in err and files == []


def test_models_list(capsys):
    assert main(["models", "list"]) == 0
    assert "deepbet-brain-extraction" in capsys.readouterr().out


def test_worker_serves_several_jobs_and_caches_models(tmp_path, model_path, input_path):
    requests = "\n".join(json.dumps({"job": name, "argv": argv}) for name, argv in [
        ("one", ["segment", str(input_path), str(tmp_path / "1.nrrd"), "--model", str(model_path)]),
        ("bad", ["segment", "--no-such-flag"]),
        ("two", ["segment", str(input_path), str(tmp_path / "2.nrrd"), "--model", str(model_path)]),
    ]) + "\n"
    process = subprocess.run([sys.executable, "-m", "meddl", "worker"], input=requests, capture_output=True,
                             text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": "-1"}, timeout=120)
    events = [json.loads(line) for line in process.stdout.splitlines() if line.startswith("{")]
    finals = {e["job"]: e for e in events if e["event"] in ("done", "error")}
    assert process.returncode == 0 and events[0]["event"] == "ready"
    assert finals["one"]["event"] == finals["two"]["event"] == "done"
    assert finals["bad"]["event"] == "error" and "unrecognized arguments: --no-such-flag" in finals["bad"]["message"]
    assert (tmp_path / "1.nrrd").is_file() and (tmp_path / "2.nrrd").is_file()


def test_model_cache_reloads_a_changed_file(tmp_path, model_path):
    from meddl.models import loading

    loading.set_model_cache_size(2)
    try:
        first = loading.load_model(model_path)
        assert loading.load_model(model_path) is first
        card = json.loads(model_path.with_suffix(".json").read_text())
        card["labels"][0]["name"] = "Renamed"
        model_path.with_suffix(".json").write_text(json.dumps(card))
        assert loading.load_model(model_path).card.labels[0].name == "Renamed"
    finally:
        loading.set_model_cache_size(0)
