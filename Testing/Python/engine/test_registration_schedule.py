"""Registration's control grids and level schedule: exact interpolation between grids, a bounded velocity grid,
levels that stop when converged or out of time, and the options that reach them from the command line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from meddl.cli import main
from meddl.image import Image
from meddl.io import write_image
from meddl.registration.fields import lps_points, sample
from meddl.registration.grids import coarser_grid, control_factor, resampler
from meddl.registration.optimise import RegistrationSettings, register
from meddl.registration.schedule import LevelClock, Schedule
from meddl_testing import blob_image, oblique_direction


@pytest.fixture
def grid() -> Image:
    return Image(np.zeros((13, 17, 11), np.float32), (1.3, 0.8, 2.1), (-20.0, 31.0, 12.5), oblique_direction(0.35))


@pytest.mark.parametrize("factor", [2, 3])
def test_resampling_between_block_grids_equals_trilinear_sampling_with_border_padding(grid, factor):
    coarse = coarser_grid(grid, factor)
    field = torch.randn(3, *coarse.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = sample(field, coarse, lps_points(grid), padding="border")
    np.testing.assert_allclose(resampler(coarse, grid)(field).numpy(), expected.numpy(), atol=1e-9)
    back = sample(expected, grid, lps_points(coarse), padding="border")
    np.testing.assert_allclose(resampler(grid, coarse)(expected).numpy(), back.numpy(), atol=1e-9)


def test_resampling_refuses_grids_of_different_directions(grid):
    turned = Image(grid.array, grid.spacing, grid.origin, oblique_direction(0.1))
    with pytest.raises(ValueError, match="direction"):
        resampler(grid, turned)


@pytest.mark.parametrize("shape, cap, expected", [((91, 109, 91), 2**19, 2), ((182, 218, 182), 2**19, 3),
                                                  ((40, 40, 40), 2**19, 1)])
def test_the_control_grid_never_exceeds_its_voxel_cap(shape, cap, expected):
    factor = control_factor(Image(np.zeros(shape, np.float32)), cap)
    assert factor == expected
    assert np.prod(coarser_grid(Image(np.zeros(shape, np.float32)), factor).shape) <= cap


def test_a_level_stops_when_its_loss_stops_improving():
    clock = LevelClock("level", steps=1000, deadline=float("inf"), tolerance=1e-3)
    losses = [-0.5 - 0.1 * (1 - np.exp(-step / 5)) for step in range(1000)]
    stopped = next(step for step, loss in enumerate(losses, 1) if clock.done(loss))
    assert clock.stopped_by == "converged" and 20 <= stopped < 100 and stopped % 10 == 0


def test_without_tolerance_a_level_runs_all_its_steps():
    clock = LevelClock("level", steps=30, deadline=float("inf"), tolerance=0)
    assert [clock.done(-1.0) for _ in range(30)] == [False] * 29 + [True]
    assert clock.summary() == {"level": "level", "steps": 30, "stopped_by": "steps"}


def test_the_time_budget_is_shared_by_cost_and_cumulatively():
    schedule = Schedule([("a", 10, 1.0), ("b", 10, 3.0)], budget_s=100.0, tolerance=0)
    first, second = (clock.deadline for clock in schedule.clocks)
    assert second - first == pytest.approx(75.0) and first == pytest.approx(second - 75.0)


def test_an_exhausted_budget_gives_one_step_a_level_and_a_whole_field():
    fixed = blob_image(shape=(20, 24, 24))
    moving = fixed.with_array(np.roll(fixed.array, 2, axis=2))
    result = register(fixed, moving, RegistrationSettings(device="cpu", time_budget_s=1e-9))
    assert [(level["steps"], level["stopped_by"]) for level in result.metrics["levels"]] == [(1, "time budget")] * 5
    assert result.displacement.shape == (*fixed.shape, 3) and np.isfinite(result.displacement).all()


def test_the_command_line_passes_the_time_budget_and_tolerance(tmp_path, monkeypatch):
    import meddl.registration.optimise as optimise

    seen = {}
    real = optimise.register

    def spy(fixed, moving, settings=None, progress=None):
        seen["settings"] = settings
        return real(fixed, moving, settings, progress)

    monkeypatch.setattr(optimise, "register", spy)
    fixed = blob_image(shape=(16, 16, 16))
    write_image(fixed, tmp_path / "f.nii.gz")
    write_image(fixed.with_array(np.roll(fixed.array, 1, axis=2)), tmp_path / "m.nii.gz")
    assert main(["register", str(tmp_path / "f.nii.gz"), str(tmp_path / "m.nii.gz"), "--out-transform",
                 str(tmp_path / "t.nii.gz"), "--time-budget", "0.001", "--tolerance", "0.01", "--device", "cpu",
                 "--progress", "none"]) == 0
    assert seen["settings"].time_budget_s == 0.001 and seen["settings"].tolerance == 0.01
    with pytest.raises(SystemExit) as refused:
        main(["register", str(tmp_path / "f.nii.gz"), str(tmp_path / "m.nii.gz"), "--out-transform",
              str(tmp_path / "u.nii.gz"), "--time-budget", "-1"])
    assert refused.value.code == 2 and not (tmp_path / "u.nii.gz").exists()


@pytest.mark.parametrize("shape, spacing, expected", [((182, 218, 182), 1.0, (8, 4, 2)),
                                                      ((91, 109, 91), 2.0, (4, 2, 1)), ((40, 48, 40), 2.0, (4, 2, 1))])
def test_heads_of_any_voxel_size_get_the_same_pyramid_in_millimetres_and_velocity_grid(shape, spacing, expected):
    """1 mm and 2 mm heads are seen at 8, 4 and 2 mm and end on the same 2 mm velocity grid, so a large
    misalignment is met alike and the bending energy weighs alike on both; small images keep 4, 2, 1."""
    from meddl.registration.optimise import Registration, pyramid

    assert pyramid(shape) == expected
    fixed = Image(np.ones(shape, np.float32), (spacing,) * 3)
    registration = Registration.__new__(Registration)
    registration.settings = RegistrationSettings(levels=pyramid(shape))
    capped, spacings = None, []
    for factor in registration.settings.levels:
        level_grid = fixed if factor == 1 else Image(np.zeros(tuple(-(-n // factor) for n in shape), np.float32),
                                                     (spacing * factor,) * 3)
        control, capped = registration._control_grid(level_grid, capped)
        assert np.prod(control.shape) <= registration.settings.max_control_voxels
        spacings.append(control.spacing[0])
    if shape[0] > 80:
        assert spacings == [8.0, 4.0, 2.0]


def test_the_folding_penalty_is_the_mean_shortfall_of_the_jacobian_determinant(grid):
    from meddl.registration.fields import folding_penalty, jacobian_determinant
    from meddl_testing import smooth_random_field

    field = smooth_random_field(grid, 3.0, seed=1)
    expected = np.maximum(0.1 - jacobian_determinant(field, grid), 0).mean()
    assert expected > 0  # this field folds somewhere
    penalty = folding_penalty(torch.from_numpy(np.moveaxis(field, -1, 0).copy()), grid)
    assert penalty.item() == pytest.approx(expected, rel=1e-9)
    assert folding_penalty(torch.zeros(3, *grid.shape, dtype=torch.float64), grid).item() == 0.0


def test_the_jacobian_determinant_by_slabs_equals_the_whole_volumes(grid):
    """Slab by slab (for memory), with neighbour slices: the same numbers as central differences over the whole."""
    from meddl.registration.fields import jacobian_determinant
    from meddl_testing import smooth_random_field

    field = smooth_random_field(grid, 3.0, seed=2)
    whole = np.stack([np.gradient(field, axis=axis) for axis in (2, 1, 0)], axis=-1)
    expected = np.linalg.det(whole @ np.linalg.inv(grid.index_to_lps()[:3, :3]) + np.eye(3))
    for slab in (1, 3, 16, 1000):
        assert np.array_equal(jacobian_determinant(field, grid, slab=slab), expected)
