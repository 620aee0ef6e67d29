"""Cohorts on one machine: `meddl segment|classify|enhance --batch INPUTS --out DIR` over a folder, a DICOM tree or
a CSV table; a failing case is recorded and the run goes on; --resume skips finished cases; a summary lists all."""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from meddl.batch import Case, find_cases
from meddl.batch.cases import safe_case_ids
from meddl.batch.runner import prefetched, prepare_folder
from meddl.cli import main
from meddl.errors import InputError, OutputError
from meddl.image import Image
from meddl.io import read_image, write_image
from meddl_testing import band_volume, one_error_line, write_band_model, write_dicom_series, write_task_models


@pytest.fixture
def band_model(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    return write_band_model(folder)


def _band_image(shift: int, spacing=(1.0, 1.5, 2.0)) -> Image:
    return Image(np.roll(band_volume(), shift, axis=2), spacing, (1.0, 2.0, 3.0))


@pytest.fixture
def cohort(tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    for index in range(3):
        write_image(_band_image(index), folder / f"patient{index}.nii.gz")
    (folder / "notes.txt").write_text("not an image")
    return folder


def _summary(out):
    report = json.loads((out / "summary.json").read_text())
    return {record["case"]: record for record in report["records"]}, report


def _segment(cohort, out, model, *more):
    return main(["segment", "--batch", str(cohort), "--out", str(out), "--model", str(model), "--device", "cpu",
                 "--progress", "none", *more])


def test_a_folder_cohort_matches_one_run_per_case_and_lists_volumes(tmp_path, cohort, band_model):
    out = tmp_path / "out"
    assert _segment(cohort, out, band_model) == 0
    records, report = _summary(out)
    assert sorted(records) == ["patient0", "patient1", "patient2"] and report["done"] == 3 and report["failed"] == 0
    for case in records:
        single = tmp_path / f"{case}_single.nii.gz"
        assert main(["segment", str(cohort / f"{case}.nii.gz"), str(single), "--model", str(band_model),
                     "--device", "cpu", "--progress", "none"]) == 0
        batch = read_image(out / f"{case}.nii.gz")
        np.testing.assert_array_equal(batch.array, read_image(single).array)
        assert json.loads((out / f"{case}.labels.json").read_text())["labels"][0]["name"] == "Liver"
        voxel_ml = 1.0 * 1.5 * 2.0 / 1000
        assert records[case]["details"]["volume_ml Spleen"] == pytest.approx((batch.array == 2).sum() * voxel_ml)
        assert records[case]["status"] == "done" and records[case]["seconds"] > 0
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [row["case"] for row in rows] == sorted(records) and "volume_ml Kidney" in rows[0]


def test_a_failing_case_is_recorded_and_the_others_are_done_then_resume_runs_only_it(tmp_path, cohort, band_model,
                                                                                      capsys):
    (cohort / "patient1.nii.gz").write_bytes(b"not a nifti file")
    out = tmp_path / "out"
    assert _segment(cohort, out, band_model) == 7
    assert "case patient1 failed" in capsys.readouterr().err
    records, report = _summary(out)
    assert (report["done"], report["failed"]) == (2, 1)
    assert records["patient1"]["status"] == "failed" and "patient1.nii.gz" in records["patient1"]["message"]
    assert not (out / "patient1.nii.gz").exists()
    finished = {case: (out / f"{case}.nii.gz").stat().st_mtime_ns for case in ("patient0", "patient2")}
    write_image(_band_image(1), cohort / "patient1.nii.gz")
    assert _segment(cohort, out, band_model) == 5  # the folder holds an earlier run: refused without --resume
    assert _segment(cohort, out, band_model, "--resume") == 0
    records, report = _summary(out)
    assert report["done"] == 3 and (out / "patient1.nii.gz").exists()
    assert {case: (out / f"{case}.nii.gz").stat().st_mtime_ns for case in finished} == finished


def test_an_interrupted_run_leaves_whole_outputs_and_resume_finishes_it(tmp_path, cohort, band_model, monkeypatch):
    from meddl.batch.tasks import SegmentCases

    original, calls = SegmentCases.run, []

    def interrupted(self, case, data, folder, progress):
        calls.append(case.id)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the user's Cancel or Ctrl-C during the second case
        return original(self, case, data, folder, progress)

    monkeypatch.setattr(SegmentCases, "run", interrupted)
    out = tmp_path / "out"
    assert _segment(cohort, out, band_model) == 130
    records, _ = _summary(out)
    assert list(records) == ["patient0"]
    assert sorted(path.name for path in out.iterdir()) == ["patient0.labels.json", "patient0.nii.gz",
                                                           "summary.csv", "summary.json"]
    monkeypatch.setattr(SegmentCases, "run", original)
    assert _segment(cohort, out, band_model, "--resume") == 0
    assert _summary(out)[1]["done"] == 3


def test_a_dicom_tree_gives_one_case_per_series(tmp_path, band_model):
    tree = tmp_path / "dicom"
    (tree / "study1").mkdir(parents=True)
    (tree / "study2" / "mr").mkdir(parents=True)
    images = {"study1_1": _band_image(0), "study1_2": _band_image(2), "study2_mr": _band_image(4)}
    write_dicom_series(images["study1_1"], tree / "study1", series="1.2.826.0.1.3680043.2.1125.9.100101")
    write_dicom_series(images["study1_2"], tree / "study1", series="1.2.826.0.1.3680043.2.1125.9.100102")
    write_dicom_series(images["study2_mr"], tree / "study2" / "mr", series="1.2.826.0.1.3680043.2.1125.9.100103")
    cases = find_cases(tree)
    assert [case.id for case in cases] == sorted(images) and all(len(case.dicom_files) == 12 for case in cases)
    out = tmp_path / "out"
    assert _segment(tree, out, band_model) == 0
    for case, image in images.items():
        labels = read_image(out / f"{case}.nii.gz")
        np.testing.assert_array_equal(labels.array, np.clip(np.rint(image.array), 0, 3))


def test_a_folder_gdcm_cannot_scan_fails_as_one_case_and_the_others_run(tmp_path, band_model, capsys):
    pydicom = pytest.importorskip("pydicom")
    tree = tmp_path / "dicom"
    (tree / "good").mkdir(parents=True)
    (tree / "odd").mkdir()
    write_dicom_series(_band_image(0), tree / "good")
    shutil.copy(Path(pydicom.__file__).parent / "data" / "test_files" / "rtdose_1frame.dcm", tree / "odd")
    out = tmp_path / "out"
    assert _segment(tree, out, band_model) == 7
    records, _ = _summary(out)
    assert records["good"]["status"] == "done" and records["odd"]["status"] == "failed"
    assert "cannot look for DICOM series in folder" in records["odd"]["message"]
    assert "Traceback" not in capsys.readouterr().err

def test_a_csv_table_names_cases_and_a_missing_file_fails_only_its_case(tmp_path, cohort, band_model):
    table = tmp_path / "cases.csv"
    table.write_text("case,image\nfirst,scans/patient0.nii.gz\nsecond/../x,scans/missing.nii.gz\n"
                     f"third,{cohort / 'patient2.nii.gz'}\n")
    out = tmp_path / "out"
    assert _segment(table, out, band_model) == 7
    records, _ = _summary(out)
    assert {case: record["status"] for case, record in records.items()} == {
        "first": "done", "second_.._x": "failed", "third": "done"}
    assert "input not found" in records["second_.._x"]["message"]
    assert not list(tmp_path.glob("x*")), "a case id never becomes a path outside --out"


@pytest.mark.parametrize("text, words", [("image\na.nii.gz\n", "first row must name the columns"),
                                         ("case,image\n", "no cases"),
                                         ("case,t1,t2\na,x.nii.gz\n", "expected 3 non-empty cells"),
                                         ("case,image\n\na,x.nii.gz\n\nb,\n", "line 5: expected 2")])
def test_a_bad_csv_table_is_a_clear_error(tmp_path, band_model, capsys, text, words):
    (tmp_path / "cases.csv").write_text(text)
    code = _segment(tmp_path / "cases.csv", tmp_path / "out", band_model)
    one_error_line(capsys, code, 3, words)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, words", [
    (["--out", "OUT"], "only with --batch"),
    (["--batch", "IN"], "needs --out"),
    (["IN", "x.nii.gz", "--batch", "IN", "--out", "OUT"], "do not also give INPUT and OUTPUT"),
    (["IN", "x.nii.gz", "--output-format", "nrrd"], "only with --batch"),
    (["IN"], "give OUTPUT"),
    (["--batch", "IN", "--out", "OUT", "--ray-workers", "2"], "--ray-workers: only with --ray"),
    (["IN", "x.nii.gz", "--cpus-per-worker", "2"], "only with --batch"),
])
def test_cohort_options_that_do_not_go_together_are_usage_errors(tmp_path, cohort, band_model, capsys, args,
                                                                 words):
    args = [str(cohort) if arg == "IN" else str(tmp_path / "out") if arg == "OUT" else arg for arg in args]
    code = main(["segment", *args, "--model", str(band_model), "--progress", "none"])
    one_error_line(capsys, code, 2, words)


def test_outputs_never_go_into_the_inputs_or_over_other_files(tmp_path, cohort, band_model, capsys):
    one_error_line(capsys, _segment(cohort, cohort / "results", band_model), 5, "inside the input folder")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    one_error_line(capsys, _segment(cohort, busy, band_model), 5, "not empty")
    assert [path.name for path in busy.iterdir()] == ["keep.txt"]


def test_dicom_seg_output_is_refused_for_image_files_before_any_work(tmp_path, cohort, band_model, capsys):
    code = _segment(cohort, tmp_path / "out", band_model, "--output-format", "dicom-seg")
    one_error_line(capsys, code, 3, "these cases are image files: patient0, patient1, patient2")


def test_json_progress_reports_each_case_with_its_status(tmp_path, cohort, band_model, capsys):
    (cohort / "patient2.nii.gz").write_bytes(b"broken")
    out = tmp_path / "out"
    code = main(["segment", "--batch", str(cohort), "--out", str(out), "--model", str(band_model),
                 "--device", "cpu", "--progress", "json"])
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 7
    cases = [event["metrics"] for event in events if "metrics" in event]
    assert [(case["case"], case["status"]) for case in cases] == [
        ("patient0", "done"), ("patient1", "done"), ("patient2", "failed")]
    assert any("left" in event.get("message", "") for event in events)
    done = events[-1]
    assert done["event"] == "done" and (done["done"], done["failed"]) == (2, 1) and len(done["cases"]) == 3


def test_the_next_case_is_read_while_the_current_one_runs():
    read_started: dict[str, float] = {}
    ran: dict[str, tuple[float, float]] = {}

    def read(case: Case) -> str:
        read_started[case.id] = time.perf_counter()
        time.sleep(0.05)
        return case.id

    cases = [Case(name, (name,)) for name in "abc"]
    for case, _data, _error in prefetched(read, cases):
        start = time.perf_counter()
        time.sleep(0.2)
        ran[case.id] = (start, time.perf_counter())
    assert read_started["b"] < ran["a"][1] and read_started["c"] < ran["b"][1]


def test_a_reading_error_becomes_that_case_s_failure():
    def read(case: Case) -> str:
        if case.id == "b":
            raise InputError("b is broken")
        return case.id

    results = [(case.id, data, str(error) if error else None) for case, data, error in
               prefetched(read, [Case(name, (name,)) for name in "abc"])]
    assert results == [("a", "a", None), ("b", None, "b is broken"), ("c", "c", None)]


def test_classify_and_enhance_cohorts_write_one_table_and_one_image_per_case(tmp_path):
    models = write_task_models(tmp_path)
    scans = tmp_path / "scans"
    scans.mkdir()
    for name in ("noisy", "fixed", "moving"):
        (tmp_path / f"{name}.nii.gz").rename(scans / f"{name}.nii.gz")
    out = tmp_path / "classified"
    assert main(["classify", "--batch", str(scans), "--out", str(out), "--model", str(models["classification"]),
                 "--batch-saliency", "--device", "cpu", "--progress", "none"]) == 0
    rows = list(csv.DictReader((out / "classification.csv").open()))
    assert [row["case"] for row in rows] == ["fixed", "moving", "noisy"]
    assert float(rows[0]["p_low"]) + float(rows[0]["p_high"]) == pytest.approx(1.0, abs=1e-5)
    assert all((out / f"{row['case']}_saliency.nii.gz").exists() for row in rows)
    single = tmp_path / "single.csv"
    assert main(["classify", str(scans / "fixed.nii.gz"), "--csv", str(single), "--model",
                 str(models["classification"]), "--device", "cpu", "--progress", "none"]) == 0
    assert next(csv.DictReader(single.open()))["p_low"] == rows[0]["p_low"]
    enhanced = tmp_path / "enhanced"
    assert main(["enhance", "--batch", str(scans), "--out", str(enhanced), "--task", "denoise", "--model",
                 str(models["enhancement"]), "--device", "cpu", "--progress", "none"]) == 0
    for name in ("noisy", "fixed", "moving"):
        assert read_image(enhanced / f"{name}.nii.gz").array.shape == read_image(scans / f"{name}.nii.gz").array.shape
    assert main(["enhance", "--batch", str(scans), "--out", str(tmp_path / "e2"), "--task", "denoise",
                 "--save-model", str(tmp_path / "m.pt"), "--progress", "none"]) == 2


def test_dicom_series_give_dicom_seg_objects_that_read_back_as_the_label_maps(tmp_path, band_model):
    pydicom = pytest.importorskip("pydicom")
    from meddl.dicom import series_files
    from meddl.dicom_seg import read_dicom_seg

    real = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests"
    tree = tmp_path / "dicom"
    shutil.copytree(real / "98892001" / "CT5N", tree / "patientA" / "ct")
    (tree / "patientB").mkdir()
    for name in ("17136", "17166", "17196"):  # the evenly spaced slices of this real series
        shutil.copy(real / "77654033" / "CT2" / name, tree / "patientB" / name)
    assert _segment(tree, tmp_path / "seg", band_model, "--output-format", "dicom-seg") == 0
    assert _segment(tree, tmp_path / "nifti", band_model) == 0
    for case, folder in (("patientA_ct", tree / "patientA" / "ct"), ("patientB", tree / "patientB")):
        labels, segments = read_dicom_seg(tmp_path / "seg" / f"{case}.seg.dcm", series_files(folder))
        expected = read_image(tmp_path / "nifti" / f"{case}.nii.gz").array
        np.testing.assert_array_equal(labels, expected)
        assert {segment.name for segment in segments} <= {"Liver", "Spleen", "Kidney"}
        dataset = pydicom.dcmread(tmp_path / "seg" / f"{case}.seg.dcm")
        source = pydicom.dcmread(series_files(folder)[0])
        assert dataset.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    again = find_cases(tree)
    assert [case.id for case in again] == ["patientA_ct", "patientB"], "earlier SEG outputs are never cases"


def test_a_model_that_cannot_load_fails_before_the_output_folder_is_made(tmp_path, cohort, band_model, capsys):
    band_model.write_bytes(b"corrupt")
    one_error_line(capsys, _segment(cohort, tmp_path / "out", band_model), 4)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("make, code, words", [
    (lambda tmp: tmp / "missing", 3, "not found"),
    (lambda tmp: write_image(_band_image(0), tmp / "one.nii.gz"), 3, "give a folder of images"),
    (lambda tmp: (tmp / "empty").mkdir() or tmp / "empty", 3, "no image files"),
])
def test_a_batch_source_that_holds_no_cases_is_a_clear_error(tmp_path, band_model, capsys, make, code, words):
    one_error_line(capsys, _segment(make(tmp_path), tmp_path / "out", band_model), code, words)


def test_a_damaged_summary_cannot_be_resumed(tmp_path, cohort, band_model, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text("{not json")
    one_error_line(capsys, _segment(cohort, out, band_model, "--resume"), 5, "not a MedDL batch summary")


def test_case_ids_are_file_names_on_every_system_and_stay_as_given_when_they_can():
    ids = safe_case_ids(["a", "A", "a", "a_2", "con", "Aux.t1", "../../x", ".", "L" * 300, "L" * 300])
    assert ids == ["a", "A_3", "a_4", "a_2", "con_", "Aux_.t1", "x", "case", "L" * 100, "L" * 100 + "_2"]
    assert len({case_id.casefold() for case_id in ids}) == len(ids)  # unique where file names ignore case
    assert safe_case_ids(ids) == ids  # Slicer's cohort job names its cases first; the engine keeps them


def test_resume_continues_only_the_same_command_s_run_in_its_own_folder(tmp_path, cohort, band_model, capsys):
    out = tmp_path / "out"
    assert _segment(cohort, out, band_model) == 0
    capsys.readouterr()
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    code = main(["enhance", "--batch", str(cohort), "--out", str(out), "--resume", "--task", "denoise",
                 "--device", "cpu", "--progress", "none"])
    one_error_line(capsys, code, 5, "summary of a 'meddl segment --batch' run")
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "patient0.nii.gz").write_bytes(b"my own file")
    one_error_line(capsys, _segment(cohort, mine, band_model, "--resume"), 5, "holds no summary.json")
    assert [path.name for path in mine.iterdir()] == ["patient0.nii.gz"]


def test_resume_runs_again_a_case_whose_id_now_names_other_inputs(tmp_path, cohort, band_model):
    out = tmp_path / "out"
    assert _segment(cohort, out, band_model) == 0
    write_image(_band_image(5), cohort / "patient0.mha")  # sorts first: it is case patient0 now
    assert _segment(cohort, out, band_model, "--resume") == 0
    records, _ = _summary(out)
    assert records["patient0"]["inputs"] == [str(cohort / "patient0.mha")]
    assert records["patient0_2"]["inputs"] == [str(cohort / "patient0.nii.gz")]
    for case, shift in (("patient0", 5), ("patient0_2", 0)):
        np.testing.assert_array_equal(read_image(out / f"{case}.nii.gz").array,
                                      np.clip(np.rint(_band_image(shift).array), 0, 3))


def test_an_unreadable_folder_is_a_clear_error(tmp_path, cohort, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()

    def refused(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "iterdir", refused)
    with pytest.raises(OutputError, match="cannot read the folder .Permission denied"):
        prepare_folder(out, resume=False)
    with pytest.raises(InputError, match="cannot read the folder .Permission denied"):
        find_cases(cohort)


def test_a_folder_holding_only_a_summary_of_no_case_is_taken_as_empty(tmp_path, cohort, band_model, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text(json.dumps({"command": "segment", "cases": 3, "records": []}))
    (out / "summary.csv").write_text("")
    assert _segment(cohort, out, band_model) == 0  # e.g. a Ray run whose workers could not load the model
    assert _summary(out)[1]["done"] == 3


def test_resume_keeps_a_done_case_whose_earlier_inputs_are_gone(tmp_path, cohort, band_model):
    out = tmp_path / "out"
    assert _segment(cohort, out, band_model) == 0
    before = _summary(out)[0]
    moved = cohort.rename(tmp_path / "exported_again")  # as Slicer's cohort job exports volumes anew each time
    assert _segment(moved, out, band_model, "--resume") == 0
    assert _summary(out)[0] == before, "nothing ran again"


def test_what_a_killed_run_left_while_writing_its_summary_is_removed(tmp_path, cohort, band_model):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".meddl-999999999-a1b2c3.tmp").write_text('{"command": "seg')  # a summary being written, killed
    assert _segment(cohort, out, band_model) == 0
    assert not list(out.glob(".meddl-*"))
    summary = out / "summary.json"
    assert summary.stat().st_mode & 0o777 == (out / "patient0.nii.gz").stat().st_mode & 0o777  # not private


def test_resume_refuses_a_run_with_another_model_or_format(tmp_path, cohort, band_model, capsys):
    out = tmp_path / "out"
    (cohort / "patient2.nii.gz").write_bytes(b"broken")
    assert _segment(cohort, out, band_model) == 7
    capsys.readouterr()
    other = tmp_path / "other"
    other.mkdir()
    code = _segment(cohort, out, write_band_model(other), "--resume")
    one_error_line(capsys, code, 5, "the earlier run had other settings (model")
    code = _segment(cohort, out, band_model, "--resume", "--output-format", "nrrd")
    one_error_line(capsys, code, 5, "output_format 'nii.gz' then, 'nrrd' now")
    assert _segment(cohort, out, band_model, "--resume", "--device", "cpu") == 7  # the device may change
