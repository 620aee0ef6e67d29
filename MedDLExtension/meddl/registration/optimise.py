"""Instance-optimisation registration: affine pre-alignment, then a dense deformation, over a resolution pyramid.

The affine stage starts from the centres of mass and optimises T(x) = (I + M)(x - c) + c + t with
a similarity loss at coarse levels. The deformable stage optimises a stationary velocity field at
each level of the fixed image's pyramid, integrated by scaling and squaring into a diffeomorphic
displacement d, with MONAI's local normalised cross-correlation (one modality) or global mutual
information (two) plus MONAI's bending energy and a penalty where the Jacobian determinant falls
below 0.1 (folding). The velocity lives on a control grid of at most
`max_control_voxels` points (the level's own grid when it is small enough, else one of blocks of it),
and its displacement is interpolated onto the level's grid, where the similarity is measured: the
cost of a step then grows with the image only through the similarity, and memory stays bounded.
Each level stops after its steps, when its loss stops improving, or when its share of the time
budget is spent. The result is one displacement field D(x) = A(x + d(x)) - x on the full fixed grid,
in the ITK convention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint

from ..device import select_compute
from ..errors import InputError
from ..image import Image, check_scalar_volume
from ..progress import Progress, no_progress
from .fields import folded_share, folding_penalty, lps_points, sample
from .grids import coarser_grid, control_factor, resampler
from .schedule import LevelClock, Schedule

SIMILARITIES = ("lncc", "mi")


@dataclass
class RegistrationSettings:
    method: str = "deformable"  # "affine" or "deformable" (affine first, then the deformation)
    similarity: str = "lncc"  # "lncc": one modality; "mi": mutual information, for two modalities
    levels: Optional[tuple[int, ...]] = None  # the deformable pyramid's downsampling factors (None: `pyramid`)
    affine_iterations: int = 80  # per level (1/4, then 1/2 resolution)
    deformable_iterations: tuple[int, ...] = (80, 60, 40)  # per level of `levels`
    smoothness: float = 1.0  # weight of the bending energy (measured on the velocity's grid)
    folding_weight: float = 1.0  # weight of the penalty on volumes the transform folds or squeezes below 10 %
    squaring_steps: int = 6  # 0: a plain displacement field instead of a diffeomorphic one
    learning_rate: float = 0.5  # mm per step for the velocity field
    device: str = "auto"
    time_budget_s: Optional[float] = None  # shared among the levels by their expected cost
    tolerance: float = 1e-3  # a level stops when 10 steps improve its loss by less than this share; 0: never
    max_control_voxels: int = 2**20  # the velocity field's grid is no finer than this


@dataclass
class RegistrationResult:
    displacement: np.ndarray  # (k, j, i, 3) LPS mm on the fixed grid
    affine: np.ndarray  # 4x4, LPS, fixed -> moving
    metrics: dict = field(default_factory=dict)


def unit_range(array: np.ndarray) -> torch.Tensor:
    """Intensities to [0, 1] by the 0.5 and 99.5 percentiles (mutual information needs a fixed range)."""
    low, high = np.percentile(array, (0.5, 99.5))
    return torch.from_numpy(np.clip((array - low) / max(high - low, 1e-6), 0, 1).astype(np.float32))


def pooled(volume: torch.Tensor, grid: Image, factor: int) -> tuple[torch.Tensor, Image]:
    """(k, j, i) volume averaged over factor^3 blocks, with the grid of the block centres."""
    if factor == 1:
        return volume, grid
    small = torch.nn.functional.avg_pool3d(volume[None, None], factor, factor, ceil_mode=True)[0, 0]
    return small, coarser_grid(grid, factor)


def check_pair(fixed: Image, moving: Image) -> None:
    for image, what in ((fixed, "fixed image"), (moving, "moving image")):
        check_scalar_volume(image, what)
        if min(image.shape) < 8:
            raise InputError(f"the {what} has shape {image.shape}: registration needs at least 8 voxels along "
                             "each axis (a 2D image cannot be aligned with a volume)")


def similarity_loss(kind: str) -> torch.nn.Module:
    from monai.losses import GlobalMutualInformationLoss, LocalNormalizedCrossCorrelationLoss

    if kind not in SIMILARITIES:
        raise InputError(f"similarity must be one of {', '.join(SIMILARITIES)}, not {kind!r}")
    if kind == "mi":
        return GlobalMutualInformationLoss(num_bins=32)
    return LocalNormalizedCrossCorrelationLoss(spatial_dims=3, kernel_size=5)


def centre_of_mass(volume: torch.Tensor, grid: Image) -> torch.Tensor:
    weights = volume.double() / volume.double().sum()
    return (lps_points(grid).to(weights.device) * weights[..., None]).sum(dim=(0, 1, 2))


class AffineTransform(torch.nn.Module):
    """T(x) = (I + M)(x - c) + c + t in LPS mm; M and t are optimised."""

    def __init__(self, centre: torch.Tensor, translation: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("centre", centre.float())
        self.linear = torch.nn.Parameter(torch.zeros(3, 3))
        self.translation = torch.nn.Parameter(translation.float().clone())

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return (points - self.centre) @ (torch.eye(3).to(points) + self.linear).T + self.centre + self.translation

    def matrix(self) -> np.ndarray:
        linear = (torch.eye(3) + self.linear.detach().cpu()).double()
        centre, translation = self.centre.cpu().double(), self.translation.detach().cpu().double()
        offset = centre + translation - linear @ centre
        out = np.eye(4)
        out[:3, :3], out[:3, 3] = linear.numpy(), offset.numpy()
        return out


def integrate(velocity: torch.Tensor, grid: Image, points: torch.Tensor, steps: int) -> torch.Tensor:
    """Scaling and squaring: the displacement (3, k, j, i) of exp(velocity); `points` are the grid's."""
    displacement = velocity / (2**steps)
    for _ in range(steps):
        moved = points + displacement.permute(1, 2, 3, 0)
        displacement = displacement + sample(displacement, grid, moved, padding="border")
    return displacement


COARSEST_VOXELS = 22  # the coarsest level's smallest side, about: a head at 8 mm


def pyramid(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Three downsampling factors, the coarsest such that the image's smallest side is about `COARSEST_VOXELS`
    voxels there (at least 4): (4, 2, 1) for a 2 mm head, (8, 4, 2) for a 1 mm one. So both start from the same
    coarse view of a large misalignment; the finest level of a fine image is skipped, as its velocity's control
    grid is coarser than its voxels anyway."""
    coarsest = max(4, 2 ** round(math.log2(max(min(shape[:3]), 1) / COARSEST_VOXELS)))
    return coarsest, coarsest // 2, coarsest // 4


class Registration:
    """One fixed/moving pair: the pyramid, the two stages, and the final full-resolution field."""

    def __init__(self, fixed: Image, moving: Image, settings: RegistrationSettings, report: Progress) -> None:

        check_pair(fixed, moving)
        self.fixed, self.moving, self.report = fixed, moving, report
        levels = settings.levels or pyramid(fixed.shape)
        self.settings = replace(settings, levels=levels)
        self.affine_levels = pyramid(fixed.shape)[:2]
        self.device = select_compute(settings.device).device
        self.fixed_volume = unit_range(fixed.array.astype(np.float32)).to(self.device)
        self.moving_volume = unit_range(moving.array.astype(np.float32)).to(self.device)
        self.loss = similarity_loss(settings.similarity)
        self.schedule = self._schedule()

    def _schedule(self) -> Schedule:
        """The clocks of the affine levels, then the deformable ones; costs are steps x voxels of each level."""
        settings, voxels = self.settings, float(np.prod(self.fixed.shape[:3]))
        levels = [(f"affine 1/{factor}", settings.affine_iterations, settings.affine_iterations * voxels / factor**3)
                  for factor in self.affine_levels]
        if settings.method == "deformable":
            for index, factor in enumerate(settings.levels):
                steps = settings.deformable_iterations[min(index, len(settings.deformable_iterations) - 1)]
                levels.append((f"deformable 1/{factor}", steps, steps * voxels / factor**3))
        return Schedule(levels, settings.time_budget_s, settings.tolerance)

    def _level(self, factor: int):
        fixed, grid = pooled(self.fixed_volume, self.fixed, factor)
        moving, moving_grid = pooled(self.moving_volume, self.moving, factor)
        return fixed, grid, moving[None], moving_grid, lps_points(grid).float().to(self.device)

    def _report(self, clock: LevelClock, index: int, stage: tuple[float, float]) -> None:
        step = len(clock.losses)
        if step % 10 == 1:
            count = len(self.affine_levels) if stage[0] == 0.0 else len(self.settings.levels)
            done = (index + min(step / clock.steps, 1.0)) / count
            self.report(stage[0] + stage[1] * done, f"{clock.name}, step {step}")

    def affine_stage(self) -> AffineTransform:
        shift = centre_of_mass(self.moving_volume, self.moving) - centre_of_mass(self.fixed_volume, self.fixed)
        transform = AffineTransform(centre_of_mass(self.fixed_volume, self.fixed), shift).to(self.device)
        optimiser = torch.optim.Adam([{"params": [transform.linear], "lr": 2e-3},
                                      {"params": [transform.translation], "lr": 0.5}])
        for index, factor in enumerate(self.affine_levels):
            fixed, _, moving, moving_grid, points = self._level(factor)
            clock = self.schedule.clocks[index]
            while True:
                optimiser.zero_grad()
                loss = self._similarity(fixed, moving, moving_grid, transform(points))
                loss.backward()
                optimiser.step()
                self._report(clock, index, (0.0, 0.3))
                if clock.done(loss.item()):
                    break
        return transform

    def deformable_stage(self, affine: AffineTransform,
                         initial: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, Image]:
        """The velocity field and its grid; `initial` (3, k, j, i) on the fixed grid starts it (e.g. a network's)."""
        from monai.losses import BendingEnergyLoss

        bending, velocity, grid = BendingEnergyLoss(), initial, (self.fixed if initial is not None else None)
        capped = None  # the control grid's spacing once the voxel cap has coarsened it
        for index, factor in enumerate(self.settings.levels):
            fixed, level_grid, moving, moving_grid, points = self._level(factor)
            control, capped = self._control_grid(level_grid, capped)
            control_points, to_level = lps_points(control).float().to(self.device), resampler(control, level_grid)
            if velocity is None:
                velocity = torch.zeros(3, *control.shape, device=self.device)
            else:
                velocity = resampler(grid, control)(velocity)
            velocity, grid = velocity.detach().requires_grad_(True), control
            optimiser = torch.optim.Adam([velocity], lr=self.settings.learning_rate)
            clock, spacing = self.schedule.clocks[len(self.affine_levels) + index], float(np.mean(control.spacing))
            while True:
                optimiser.zero_grad()
                # recomputed in the backward pass rather than kept: six sampling steps' intermediates per voxel
                displacement = checkpoint(self._displacement, velocity, control, control_points, use_reentrant=False)
                moved = affine(points + to_level(displacement).permute(1, 2, 3, 0))
                loss = (self._similarity(fixed, moving, moving_grid, moved)
                        + self.settings.smoothness * bending(displacement[None] / spacing)
                        + self.settings.folding_weight * folding_penalty(displacement, control))
                loss.backward()
                optimiser.step()
                self._report(clock, index, (0.3, 0.65))
                if clock.done(loss.item()):
                    break
        return velocity.detach(), grid

    def _control_grid(self, level_grid: Image, capped: Optional[float]) -> tuple[Image, Optional[float]]:
        """The velocity's grid at a level: the level's own grid, or blocks of it when it has more points than
        `max_control_voxels`. Once the cap has coarsened it, a finer level refines only where the similarity is
        measured, never the velocity's grid: the bending energy (measured on that grid) then weighs alike on
        both levels, whatever the image's voxel size."""
        factor = control_factor(level_grid, self.settings.max_control_voxels)
        if factor > 1 and capped is not None:
            factor = max(factor, math.ceil(capped / min(level_grid.spacing) - 1e-6))
        control = coarser_grid(level_grid, factor)
        return control, (min(control.spacing) if factor > 1 else capped)

    def _similarity(self, fixed: torch.Tensor, moving: torch.Tensor, moving_grid: Image,
                    moved: torch.Tensor) -> torch.Tensor:
        """The loss over the voxels that map inside the moving image (both images masked alike)."""
        warped = sample(torch.cat([moving, torch.ones_like(moving)]), moving_grid, moved)
        inside = (warped[1] > 0.999).float()
        return self.loss((warped[0] * inside)[None, None], (fixed * inside)[None, None])

    def _displacement(self, velocity: torch.Tensor, grid: Image, points: torch.Tensor) -> torch.Tensor:
        if self.settings.squaring_steps:
            return integrate(velocity, grid, points, self.settings.squaring_steps)
        return velocity

    def run(self, affine: Optional[AffineTransform] = None, initial: Optional[torch.Tensor] = None
            ) -> RegistrationResult:
        """Both stages (or only the deformable one, from a given affine and starting displacement)."""
        affine = affine or self.affine_stage().requires_grad_(False)
        deformation = self.deformable_stage(affine, initial) if self.settings.method == "deformable" else None
        points = lps_points(self.fixed).float().to(self.device)
        with torch.no_grad():
            moved = points
            if deformation is not None:
                velocity, grid = deformation
                coarse = self._displacement(velocity, grid, lps_points(grid).float().to(self.device))
                moved = points + resampler(grid, self.fixed)(coarse).permute(1, 2, 3, 0)
            total = (affine(moved) - points).double().cpu().numpy()
        return self.result(total, affine)

    def result(self, total: np.ndarray, affine: AffineTransform) -> RegistrationResult:
        self.report(1.0, "registered")
        return RegistrationResult(total, affine.matrix(), {"folded_share": folded_share(total, self.fixed),
                                                           "levels": self.schedule.summary()})


def register(fixed: Image, moving: Image, settings: Optional[RegistrationSettings] = None,
             progress: Optional[Progress] = None) -> RegistrationResult:
    """Register `moving` to `fixed`; neither image is changed."""
    settings = settings or RegistrationSettings()
    if settings.method not in ("affine", "deformable"):
        raise InputError(f"method must be 'affine' or 'deformable', not {settings.method!r}")
    with torch.enable_grad():
        return Registration(fixed, moving, settings, progress or no_progress).run()
