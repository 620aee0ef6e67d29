"""Fill from drawn slices (issue 17's engine): drawn slices along any axes, the fill between them, warm starts,
and the command line. Real data: the MNI T1 at 2 mm with its grey/white matter labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from meddl.cli import main
from meddl.errors import InputError
from meddl.io import read_image, write_image
from meddl.painting import drawn_slices
from meddl.segmentation.slice_fill import FillSettings, fill_from_slices
from meddl_testing import mni_tissue_volume, one_error_line

QUICK = FillSettings(steps=60, warm_steps=30, time_budget_s=None, channels=(8, 16, 32, 64))


@pytest.fixture(scope="module")
def tissue(mni):
    return mni_tissue_volume(mni)


def _every(labels: np.ndarray, k: int, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels kept on every k-th slice along `axis` (from the first labelled one) and those slices' indices."""
    other = tuple(a for a in range(3) if a != axis)
    found = np.flatnonzero((labels > 0).any(axis=other))
    keep = np.arange(found[0], found[-1] + 1, k)
    painted = np.zeros_like(labels)
    index = [slice(None)] * 3
    index[axis] = keep
    painted[tuple(index)] = labels[tuple(index)]
    return painted, keep


def _dice(a: np.ndarray, b: np.ndarray, value: int) -> float:
    x, y = a == value, b == value
    return 2.0 * (x & y).sum() / (x.sum() + y.sum())


def test_slices_drawn_along_two_axes_are_found_and_the_lines_they_cut_are_not(tissue):
    _, labels = tissue
    axial, axial_keep = _every(labels.array, 10, 0)
    sagittal, sagittal_keep = _every(labels.array, 30, 2)
    neighbours = axial_keep[3] + np.array([1, 2])  # corrected slices next to a drawn one: bands, not lines
    axial[neighbours] = labels.array[neighbours]
    sagittal[:, :, sagittal_keep[1] + 1] = labels.array[:, :, sagittal_keep[1] + 1]
    drawn = drawn_slices(np.maximum(axial, sagittal))
    assert set(drawn) == {0, 2}  # coronal slices only cross the drawn ones
    assert list(drawn[0]) == sorted([*axial_keep, *neighbours])
    assert list(drawn[2]) == sorted([*sagittal_keep, sagittal_keep[1] + 1])


def test_the_fill_between_every_fifth_axial_slice_matches_the_reference(tissue):
    image, labels = tissue
    painted, keep = _every(labels.array, 5, 0)
    result = fill_from_slices(image, labels.with_array(painted), settings=FillSettings(time_budget_s=None))
    filled = result.labels.array
    assert result.labels.same_grid(image) and filled.dtype == np.uint8
    assert np.array_equal(filled[keep], painted[keep])  # drawn slices exactly as painted
    between = np.setdiff1d(np.arange(keep[0], keep[-1]), keep)
    dice = [_dice(filled[between], labels.array[between], value) for value in (1, 2)]
    assert min(dice) >= 0.85, dice  # measured 0.93 / 0.93


def test_slices_drawn_along_two_axes_fill_together_and_stay_as_drawn(tissue):
    image, labels = tissue
    axial, _ = _every(labels.array, 12, 0)
    sagittal, sagittal_keep = _every(labels.array, 12, 2)
    painted = np.where(sagittal > 0, sagittal, axial)
    index = (slice(None), slice(None), sagittal_keep)
    painted[index] = labels.array[index]
    result = fill_from_slices(image, labels.with_array(painted), settings=QUICK)
    assert set(result.drawn) == {0, 2}
    assert np.array_equal(result.labels.array[index], labels.array[index])


def test_a_second_round_starts_from_the_first_rounds_network(tissue):
    image, labels = tissue
    painted, _ = _every(labels.array, 10, 0)
    first = fill_from_slices(image, labels.with_array(painted), settings=QUICK)
    assert not first.warm_start and first.steps == QUICK.steps
    second = fill_from_slices(image, labels.with_array(painted), state=first.state, settings=QUICK)
    assert second.warm_start and second.steps == QUICK.warm_steps
    other = fill_from_slices(image, labels.with_array(np.minimum(painted, 1)), state=first.state, settings=QUICK)
    assert not other.warm_start  # another number of labels: a fresh network


@pytest.mark.parametrize("case, message", [
    ("one slice", "only one slice is painted"),
    ("lines", "no painted slice covers an area"),
    ("missing label", r"label value\(s\) \[3\] are not painted"),
    ("fractions", "whole label values from 0"),
])
def test_paintings_with_nothing_to_fill_from_are_refused(tissue, case, message):
    image, labels = tissue
    painted = np.zeros_like(labels.array)
    values = None
    if case == "one slice":
        painted[40] = labels.array[40]
    elif case == "lines":
        painted[40, 50, :] = 1
        painted[60, 50, :] = 1
    elif case == "fractions":  # an intensity image given as the painting
        painted = image.array.astype(np.float32) / 7
    else:
        painted, _ = _every(labels.array, 10, 0)
        values = [1, 2, 3]
    with pytest.raises(InputError, match=message):
        fill_from_slices(image, labels.with_array(painted), values=values, settings=QUICK)


def test_the_command_line_fills_keeps_its_state_and_refuses_a_foreign_state(tissue, tmp_path, capsys, monkeypatch):
    image, labels = tissue
    painted, keep = _every(labels.array, 10, 0)
    image_path, painted_path = write_image(image, tmp_path / "t1.nii.gz"), write_image(
        labels.with_array(painted), tmp_path / "painted.nii.gz")
    out, state = tmp_path / "filled.nii.gz", tmp_path / "round1.pt"
    args = ["fill", str(image_path), str(painted_path), "--steps", "20", "--device", "cpu", "--progress", "none"]
    assert main([*args[:3], str(out), *args[3:], "--state-out", str(state)]) == 0
    assert np.array_equal(read_image(out).array[keep], painted[keep]) and state.is_file()
    assert main([*args[:3], str(tmp_path / "again.nii.gz"), *args[3:], "--state-in", str(state)]) == 0
    capsys.readouterr()
    torch.save([1, 2], tmp_path / "list.pt")
    code = main([*args[:3], str(tmp_path / "x.nii.gz"), *args[3:], "--state-in", str(tmp_path / "list.pt")])
    one_error_line(capsys, code, 3, "not a fill state")
    assert not (tmp_path / "x.nii.gz").exists()
    torch.save({**torch.load(state, weights_only=True), "weights": {"x": torch.zeros(2)}}, tmp_path / "other.pt")
    code = main([*args[:3], str(tmp_path / "x.nii.gz"), *args[3:], "--state-in", str(tmp_path / "other.pt")])
    one_error_line(capsys, code, 3, "does not fit this network")
    assert not (tmp_path / "x.nii.gz").exists()
