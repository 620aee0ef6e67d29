"""Outputs appear whole or not at all: every path checked before the work, a job's files committed together,
inputs never overwritten, nothing left behind by a failure or a killed process (issue 16, defects 4, 5, 10, 12)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from meddl.cli import main
from meddl.errors import OutputError
from meddl.io import read_image, write_image
from meddl.outputs import OutputSet
from meddl_testing import blob_image, write_state_dict_model


@pytest.fixture
def image(tmp_path) -> Path:
    (tmp_path / "input").mkdir()
    return write_image(blob_image(shape=(12, 12, 12)), tmp_path / "input" / "image.nii.gz")


def _entries(folder: Path) -> set[str]:
    return {path.name for path in folder.iterdir()}


def _fails(capsys, argv: list[str], code: int) -> str:
    capsys.readouterr()
    assert main([*argv, "--progress", "none"]) == code
    error = capsys.readouterr().err
    assert error.startswith("meddl: error:") and "Traceback" not in error, error
    return error


def test_segment_to_an_unsupported_type_leaves_no_sidecar(models, image, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    _fails(capsys, ["segment", str(image), str(out / "labels.xyz"), "--model", str(models["segmentation"])], 5)
    assert _entries(out) == set()


def test_register_checks_every_output_before_the_work(models, tmp_path, capsys):
    folder = models["folder"]
    out = tmp_path / "out"
    out.mkdir()
    common = ["register", str(folder / "fixed.nii.gz"), str(folder / "moving.nii.gz"), "--method", "affine"]
    started = time.monotonic()
    missing_folder = str(tmp_path / "no" / "w.nii.gz")
    _fails(capsys, [*common, "--out-transform", str(out / "t.nii.gz"), "--out-warped", missing_folder], 5)
    _fails(capsys, [*common, "--out-transform", str(out / "t.txt")], 5)
    assert time.monotonic() - started < 5  # refused before registering, not after
    assert _entries(out) == set()


def test_enhance_leaves_no_saved_model_when_the_image_cannot_be_written(models, image, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    _fails(capsys, ["enhance", str(image), str(out / "den.xyz"), "--task", "denoise", "--steps", "2",
                    "--save-model", str(out / "net.pt")], 5)
    import meddl.cli.enhance as enhance

    def fail(*args, **kwargs):
        raise OutputError("disk full")

    monkeypatch.setattr(enhance, "write_image", fail)
    _fails(capsys, ["enhance", str(image), str(out / "den.nii.gz"), "--task", "denoise", "--steps", "2",
                    "--save-model", str(out / "net.pt")], 5)
    assert _entries(out) == set()


@pytest.mark.parametrize("suffix,data", [(".nhdr", "out.raw.gz"), (".mhd", "out.zraw")])
def test_header_and_data_pair_point_at_each_other(models, image, tmp_path, suffix, data):
    out = tmp_path / "out"
    out.mkdir()
    assert main(["segment", str(image), str(out / f"out{suffix}"), "--model", str(models["segmentation"]),
                 "--progress", "none"]) == 0
    assert _entries(out) == {f"out{suffix}", data, "out.labels.json"}
    assert data in (out / f"out{suffix}").read_text(errors="replace")
    assert read_image(out / f"out{suffix}").same_grid(read_image(image))


def test_output_equal_to_the_input_is_refused(models, image, capsys):
    before = image.read_bytes()
    alias = image.parent / "alias.nii.gz"
    os.link(image, alias)
    link = image.parent / "link.nii.gz"
    link.symlink_to(image)
    for output in (image, alias, link, image.parent / "." / image.name):
        error = _fails(capsys, ["segment", str(image), str(output), "--model", str(models["segmentation"])], 5)
        assert "is (or is inside) the input" in error
        _fails(capsys, ["enhance", str(image), str(output), "--task", "denoise"], 5)
    assert image.read_bytes() == before


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_leftovers_of_a_killed_process_are_removed_by_the_next_job(models, image, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    pid = _dead_pid()
    (out / f".meddl-{pid}-abcd1234").mkdir()
    (out / f".meddl-{pid}-abcd1234" / "labels.nii.gz").write_bytes(b"half")
    (out / f".labels.nii.gz.partial-{pid}.nii.gz").write_bytes(b"half")  # the name earlier versions used
    alive = out / f".meddl-{os.getpid()}-running"
    alive.mkdir()  # a job still running in this process: kept
    assert main(["segment", str(image), str(out / "labels.nii.gz"), "--model", str(models["segmentation"]),
                 "--progress", "none"]) == 0
    assert _entries(out) == {"labels.nii.gz", "labels.labels.json", alive.name}


def test_kill_9_during_a_job_leaves_nothing_the_next_job_keeps(models, image, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    script = ("import sys, time, meddl.io as io, meddl.outputs as o\n"
              "from meddl_testing import blob_image\n"
              "with o.OutputSet() as outputs:\n"
              f"    io.write_image(blob_image((8, 8, 8)), {str(out / 'a.nii.gz')!r}, outputs=outputs)\n"
              "    print('staged', flush=True)\n"
              "    time.sleep(60)\n")
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=environment)
    assert process.stdout.readline().strip() == "staged"
    process.kill()
    process.wait()
    assert any(name.startswith(".meddl-") for name in _entries(out))
    assert main(["segment", str(image), str(out / "b.nii.gz"), "--model", str(models["segmentation"]),
                 "--progress", "none"]) == 0
    assert _entries(out) == {"b.nii.gz", "b.labels.json"}


def test_two_jobs_writing_the_same_outputs_leave_one_job_s_pair(tmp_path, monkeypatch):
    """Commits are serialised per folder: the label map and its sidecar always come from the same job."""
    import meddl.outputs as outputs_module

    real_replace = os.replace

    def replace_slowly_for_job_a(source, target):
        slow = Path(source).is_file() and Path(source).read_text() == "model-a"
        real_replace(source, target)
        if slow:
            time.sleep(0.2)  # job A pauses between its two renames while job B commits

    monkeypatch.setattr(outputs_module.os, "replace", replace_slowly_for_job_a)

    def job(name: str) -> None:
        with OutputSet() as outputs:
            for output in ("labels.nii.gz", "labels.labels.json"):
                outputs.staged(tmp_path / output).write_text(name)
            outputs.commit()

    threads = [threading.Thread(target=job, args=(name,)) for name in ("model-a", "model-b")]
    threads[0].start()
    time.sleep(0.05)
    threads[1].start()
    for thread in threads:
        thread.join()
    assert (tmp_path / "labels.nii.gz").read_text() == (tmp_path / "labels.labels.json").read_text()


def test_planted_links_are_never_followed(models, image, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for pid in (os.getpid(), _dead_pid()):  # the temporary names earlier versions predicted
        (out / f".labels.nii.gz.partial-{pid}.nii.gz").symlink_to(victim)
        (out / f".labels.labels.json.partial-{pid}").symlink_to(victim)
    assert main(["segment", str(image), str(out / "labels.nii.gz"), "--model", str(models["segmentation"]),
                 "--progress", "none"]) == 0
    assert victim.read_text() == "precious"
    assert not (out / "labels.nii.gz").is_symlink()


def test_an_output_name_too_long_is_one_line(models, image, tmp_path, capsys):
    error = _fails(capsys, ["segment", str(image), str(tmp_path / ("x" * 250 + ".nii.gz")), "--model",
                            str(models["segmentation"])], 5)
    assert "longer than 255 bytes" in error


def test_classify_maps_of_inputs_with_one_stem_do_not_overwrite_each_other(models, tmp_path, capsys):
    folder = models["folder"]
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        write_image(read_image(folder / "noisy.nii.gz"), tmp_path / name / "scan.nii.gz")
    inputs = [str(tmp_path / name / "scan.nii.gz") for name in ("a", "b")]
    saliency = tmp_path / "maps"
    assert main(["classify", *inputs, "--model", str(models["classification"]), "--csv", str(tmp_path / "c.csv"),
                 "--saliency", str(saliency), "--progress", "none"]) == 0
    assert _entries(saliency) == {"scan_1_saliency.nii.gz", "scan_2_saliency.nii.gz"}
    (tmp_path / "file").write_text("not a folder")
    _fails(capsys, ["classify", *inputs, "--model", str(models["classification"]), "--csv", str(tmp_path / "d.csv"),
                    "--saliency", str(tmp_path / "file")], 5)
    assert not (tmp_path / "d.csv").exists()


def test_a_failed_classify_leaves_no_new_saliency_folder(models, tmp_path, capsys):
    folder = models["folder"]
    _fails(capsys, ["classify", str(folder / "noisy.nii.gz"), str(tmp_path / "missing.nii.gz"), "--model",
                    str(models["classification"]), "--csv", str(tmp_path / "c.csv"), "--saliency",
                    str(tmp_path / "maps")], 3)
    assert _entries(tmp_path) == set()


def test_training_output_folder_appears_whole(tmp_path):
    from meddl.outputs import staged_folder

    with pytest.raises(RuntimeError), staged_folder(tmp_path / "bundle") as staging:
        (staging / "model.pt").write_text("half")
        raise RuntimeError("cancelled")
    assert _entries(tmp_path) == set()
    with staged_folder(tmp_path / "bundle") as staging:
        (staging / "model.pt").write_text("whole")
    assert (tmp_path / "bundle" / "model.pt").read_text() == "whole"
    write_state_dict_model(tmp_path / "bundle")  # the folder is an ordinary, writable folder


def test_training_outputs_are_checked_before_training(models, tmp_path, capsys):
    image = str(models["folder"] / "noisy.nii.gz")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("user file")
    for out in (tmp_path / "missing" / "bundle", tmp_path / "full"):
        _fails(capsys, ["train", "--images", image, "--labels", image, "--label-names", "1:Blob", "--out", str(out),
                        "--epochs", "1"], 5)
        _fails(capsys, ["train-classifier", "--csv", str(tmp_path / "data.csv"), "--out", str(out)], 5)
    assert (tmp_path / "full" / "keep.txt").read_text() == "user file"


def test_an_output_is_never_the_model_or_its_card(models, image, capsys):
    model = models["classification"]
    before = model.read_bytes(), model.with_suffix(".json").read_bytes()
    for target in (model, model.with_suffix(".json")):
        _fails(capsys, ["classify", str(image), "--model", str(model), "--csv", str(target)], 5)
    _fails(capsys, ["segment", str(image), str(models["segmentation"].with_suffix(".json")), "--model",
                    str(models["segmentation"])], 5)
    assert (model.read_bytes(), model.with_suffix(".json").read_bytes()) == before


def test_header_data_files_never_overwrite_an_input_or_another_output(models, tmp_path, capsys):
    folder = models["folder"]
    source = read_image(folder / "noisy.nii.gz")
    header = write_image(source, tmp_path / "a.nhdr")
    (tmp_path / "a.raw.gz").rename(tmp_path / "out.raw.gz")  # a header may name any data file
    header.write_text(header.read_text().replace("a.raw.gz", "out.raw.gz"))
    before = (tmp_path / "out.raw.gz").read_bytes()
    _fails(capsys, ["segment", str(header), str(tmp_path / "out.nhdr"), "--model", str(models["segmentation"])], 5)
    assert (tmp_path / "out.raw.gz").read_bytes() == before
    common = ["register", str(folder / "fixed.nii.gz"), str(folder / "moving.nii.gz"), "--method", "affine"]
    _fails(capsys, [*common, "--out-transform", str(tmp_path / "t.nhdr"), "--out-report", str(tmp_path / "t.raw")],
           5)
    _fails(capsys, [*common, "--out-transform", str(tmp_path / "t.nii.gz"), "--out-warped", str(tmp_path / "w.mhd"),
                    "--out-report", str(tmp_path / "w.zraw")], 5)


def test_a_commit_that_fails_half_way_leaves_the_folder_as_it_was(tmp_path):
    (tmp_path / "b.txt").write_text("old b")
    with OutputSet() as outputs:
        for name in ("a.txt", "b.txt", "c"):
            outputs.staged(tmp_path / name).write_text("new")
        (tmp_path / "c").mkdir()  # a folder appears where the last output goes
        (tmp_path / "c" / "x").write_text("user file")
        with pytest.raises(OutputError, match="nothing was changed"):
            outputs.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.txt", "c"]
    assert (tmp_path / "b.txt").read_text() == "old b" and (tmp_path / "c" / "x").read_text() == "user file"


def test_paths_too_long_for_the_system_are_one_line(models, image, tmp_path, capsys):
    deep = tmp_path / ("d" * 300) / "labels.nii.gz"
    very_long = tmp_path / "/".join(["e" * 200] * 25) / "labels.nii.gz"
    for output in (deep, very_long):
        _fails(capsys, ["segment", str(image), str(output), "--model", str(models["segmentation"])], 5)
        _fails(capsys, ["classify", str(image), "--model", str(models["classification"]), "--csv", str(output)], 5)


def test_saliency_names_are_distinct_whatever_the_stems():
    from meddl.cli.classify import saliency_names

    for inputs in (["a.nii.gz", "x/a.nii.gz", "a_1.nii.gz"], ["a", "a", "a_2_saliency"], ["d/", "e/d"]):
        names = saliency_names(inputs)
        assert len(set(names)) == len(names), names
