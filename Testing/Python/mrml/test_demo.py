"""`make demo` on the real MNI152 T1: every output written, the model card's Dice reached, a real slice view."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import vtk
from meddl.io import read_image
from vtk.util import numpy_support

DEMO = Path(__file__).resolve().parents[3] / "examples" / "brain_extraction_demo.py"


@pytest.fixture(scope="module")
def demo_output(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("brain_extraction_demo", DEMO)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    out = tmp_path_factory.mktemp("demo")
    return out, demo.run_demo(out, "cpu")


def test_reaches_the_dice_the_card_states(demo_output):
    _, summary = demo_output
    assert summary["dice"] >= summary["card_dice"] >= 0.93


def test_writes_every_output(demo_output, mni):
    out, summary = demo_output
    for name in ["mni152_t1_brain.seg.nrrd", "mni152_t1_brain_labels.nii.gz", "mni152_t1_brain_axial.png",
                 "mni152_t1_brain_coronal.png", "mni152_t1_brain_sagittal.png", "summary.json"]:
        assert (out / name).stat().st_size > 0, name
    labels = read_image(out / "mni152_t1_brain_labels.nii.gz")
    assert labels.same_grid(read_image(mni["t1"]))
    assert json.loads((out / "summary.json").read_text())["dice"] == summary["dice"]


def test_slice_view_shows_anatomy_and_the_segment(demo_output):
    out, _ = demo_output
    reader = vtk.vtkPNGReader()
    reader.SetFileName(str(out / "mni152_t1_brain_axial.png"))
    reader.Update()
    data = reader.GetOutput()
    scalars = data.GetPointData().GetScalars()
    pixels = numpy_support.vtk_to_numpy(scalars).reshape(-1, data.GetNumberOfScalarComponents())
    rgb = pixels[:, :3].astype(int)
    grey = (np.abs(rgb[:, 0] - rgb[:, 2]) < 8) & (rgb[:, 0] > 40)  # unsegmented anatomy would be grey
    tinted = (rgb[:, 2] - rgb[:, 0] > 15) & (rgb.sum(1) > 150)  # the brain under the blue segment
    assert tinted.mean() > 0.2, "the segmentation overlay is not visible"
    assert len(np.unique(rgb[tinted], axis=0)) > 50, "no anatomy visible under the overlay"
    assert grey.mean() < tinted.mean()
