"""Property: whatever mix of good and bad inputs, outputs and options a command gets, it ends with a known exit
code and one line, and leaves either its whole output or nothing (issue 16, the suite)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from meddl.cli import main
from meddl.io import write_image
from meddl_testing import blob_image

KNOWN_EXIT_CODES = {0, 2, 3, 4, 5, 6}


@pytest.fixture(scope="module")
def pool(models, tmp_path_factory) -> dict[str, Path]:
    """Inputs good and bad, and a folder for outputs."""
    folder = tmp_path_factory.mktemp("fuzz")
    good = write_image(blob_image(shape=(12, 12, 12)), folder / "good.nii.gz")
    data = good.read_bytes()
    (folder / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    (folder / "text.nii.gz").write_text("not an image")
    (folder / "empty.nrrd").write_bytes(b"")
    (folder / "adir").mkdir()
    return {"folder": folder, "out": folder / "out", "good": good}


INPUTS = ["good.nii.gz", "cut.nii.gz", "text.nii.gz", "empty.nrrd", "adir", "missing.nii.gz"]
OUTPUTS = ["out/a.nii.gz", "out/a.nrrd", "out/a.nhdr", "out/a.txt", "out/missing/a.nii.gz", "out", "good.nii.gz",
           "out/" + "x" * 300 + ".nii.gz"]
DEVICES = ["cpu", "auto", "cuda", "cuda:7", "mps", "gpu"]


def _argv(command: str, source: str, target: str, device: str, models: dict, folder: Path) -> list[str]:
    source, target = str(folder / source), str(folder / target)
    if command == "segment":
        return ["segment", source, target, "--model", str(models["segmentation"]), "--device", device]
    if command == "enhance":
        return ["enhance", source, target, "--task", "denoise", "--device", device]
    return ["classify", source, "--model", str(models["classification"]), "--csv", target, "--device", device]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(command=st.sampled_from(["segment", "enhance", "classify"]), source=st.sampled_from(INPUTS),
       target=st.sampled_from(OUTPUTS), device=st.sampled_from(DEVICES))
def test_any_combination_ends_cleanly(models, pool, capsys, command, source, target, device):
    folder, out = pool["folder"], pool["out"]
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    before = (pool["good"].read_bytes(), sorted(p.name for p in folder.iterdir()))
    capsys.readouterr()
    try:
        code = main([*_argv(command, source, target, device, models, folder), "--progress", "none"])
    except SystemExit as exit_info:  # argparse refuses a device name that is none
        code = exit_info.code
    error = capsys.readouterr().err
    assert code in KNOWN_EXIT_CODES and "Traceback" not in error, error
    assert (pool["good"].read_bytes(), sorted(p.name for p in folder.iterdir())) == before  # inputs untouched
    written = sorted(p.name for p in out.iterdir())
    assert not any(name.startswith(".") for name in written), written  # nothing temporary left
    if code != 0:
        assert written == [] and (error.startswith("meddl: error:") or code == 2), (error, written)
