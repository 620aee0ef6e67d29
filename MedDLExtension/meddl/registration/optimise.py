"""Instance-optimisation registration: affine pre-alignment, then a dense deformation, over a resolution pyramid.

The affine stage starts from the centres of mass and optimises T(x) = (I + M)(x - c) + c + t with
a similarity loss at coarse levels. The deformable stage optimises a stationary velocity field on
the fixed image's grid at each level (upsampled between levels), integrated by scaling and
squaring into a diffeomorphic displacement d, with MONAI's local normalised cross-correlation (one
modality) or global mutual information (two) plus MONAI's bending energy. The result is one
displacement field D(x) = A(x + d(x)) - x on the full fixed grid, in the ITK convention.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from ..device import select_compute
from ..errors import InputError
from ..image import Image, check_scalar_volume
from ..progress import Progress, no_progress
from .fields import folded_share, lps_points, sample

SIMILARITIES = ("lncc", "mi")


@dataclass
class RegistrationSettings:
    method: str = "deformable"  # "affine" or "deformable" (affine first, then the deformation)
    similarity: str = "lncc"  # "lncc": one modality; "mi": mutual information, for two modalities
    levels: tuple[int, ...] = (4, 2, 1)  # pyramid: downsampling factors of the deformable stage
    affine_iterations: int = 80  # per level (1/4, then 1/2 resolution)
    deformable_iterations: tuple[int, ...] = (80, 60, 40)  # per level of `levels`
    smoothness: float = 2.0  # weight of the bending energy
    squaring_steps: int = 6  # 0: a plain displacement field instead of a diffeomorphic one
    learning_rate: float = 0.5  # mm per step for the velocity field
    device: str = "auto"
    time_budget_s: Optional[float] = None


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
    spacing = np.asarray(grid.spacing) * factor
    origin = grid.index_to_lps() @ np.array([(factor - 1) / 2] * 3 + [1.0])
    return small, Image(np.zeros(small.shape, np.float32), tuple(spacing), tuple(origin[:3]), grid.direction)


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


class Registration:
    """One fixed/moving pair: the pyramid, the two stages, and the final full-resolution field."""

    def __init__(self, fixed: Image, moving: Image, settings: RegistrationSettings, report: Progress) -> None:

        check_pair(fixed, moving)
        self.fixed, self.moving, self.settings, self.report = fixed, moving, settings, report
        self.device = select_compute(settings.device).device
        self.fixed_volume = unit_range(fixed.array.astype(np.float32)).to(self.device)
        self.moving_volume = unit_range(moving.array.astype(np.float32)).to(self.device)
        self.loss = similarity_loss(settings.similarity)
        self.started = time.monotonic()

    def out_of_time(self) -> bool:
        budget = self.settings.time_budget_s
        return bool(budget) and time.monotonic() - self.started > budget

    def _level(self, factor: int):
        fixed, grid = pooled(self.fixed_volume, self.fixed, factor)
        moving, moving_grid = pooled(self.moving_volume, self.moving, factor)
        return fixed, grid, moving[None], moving_grid, lps_points(grid).float().to(self.device)

    def affine_stage(self) -> AffineTransform:
        shift = centre_of_mass(self.moving_volume, self.moving) - centre_of_mass(self.fixed_volume, self.fixed)
        transform = AffineTransform(centre_of_mass(self.fixed_volume, self.fixed), shift).to(self.device)
        optimiser = torch.optim.Adam([{"params": [transform.linear], "lr": 2e-3},
                                      {"params": [transform.translation], "lr": 0.5}])
        for index, factor in enumerate((4, 2)):
            fixed, _, moving, moving_grid, points = self._level(factor)
            for step in range(self.settings.affine_iterations):
                optimiser.zero_grad()
                loss = self._similarity(fixed, moving, moving_grid, transform(points))
                loss.backward()
                optimiser.step()
                if step % 10 == 0:
                    done = (index + step / self.settings.affine_iterations) / 2
                    self.report(0.3 * done, f"affine: level 1/{factor}, step {step}")
                if self.out_of_time():
                    break
        return transform

    def deformable_stage(self, affine: AffineTransform,
                         initial: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, Image]:
        """The velocity field and its grid; `initial` (3, k, j, i) on the fixed grid starts it (e.g. a network's)."""
        from monai.losses import BendingEnergyLoss

        bending, velocity, grid = BendingEnergyLoss(), initial, (self.fixed if initial is not None else None)
        levels = self.settings.levels
        for index, factor in enumerate(levels):
            fixed, level_grid, moving, moving_grid, points = self._level(factor)
            if velocity is None:
                velocity = torch.zeros(3, *fixed.shape, device=self.device)
            else:
                velocity = sample(velocity, grid, points, padding="border")
            velocity, grid = velocity.detach().requires_grad_(True), level_grid
            optimiser = torch.optim.Adam([velocity], lr=self.settings.learning_rate)
            iterations = self.settings.deformable_iterations[min(index, len(self.settings.deformable_iterations) - 1)]
            for step in range(iterations):
                optimiser.zero_grad()
                displacement = self._displacement(velocity, grid, points)
                moved = affine(points + displacement.permute(1, 2, 3, 0))
                loss = self._similarity(fixed, moving, moving_grid, moved) + self.settings.smoothness * bending(
                    displacement[None] / float(np.mean(grid.spacing)))
                loss.backward()
                optimiser.step()
                if step % 10 == 0:
                    done = (index + step / iterations) / len(levels)
                    self.report(0.3 + 0.65 * done, f"deformable: level 1/{factor}, step {step}")
                if self.out_of_time():
                    break
        return velocity.detach(), grid

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
                moved = points + sample(coarse, grid, points, padding="border").permute(1, 2, 3, 0)
            total = (affine(moved) - points).double().cpu().numpy()
        return self.result(total, affine)

    def result(self, total: np.ndarray, affine: AffineTransform) -> RegistrationResult:
        self.report(1.0, "registered")
        return RegistrationResult(total, affine.matrix(), {"folded_share": folded_share(total, self.fixed)})


def register(fixed: Image, moving: Image, settings: Optional[RegistrationSettings] = None,
             progress: Optional[Progress] = None) -> RegistrationResult:
    """Register `moving` to `fixed`; neither image is changed."""
    settings = settings or RegistrationSettings()
    if settings.method not in ("affine", "deformable"):
        raise InputError(f"method must be 'affine' or 'deformable', not {settings.method!r}")
    with torch.enable_grad():
        return Registration(fixed, moving, settings, progress or no_progress).run()
