"""Learned registration: a MONAI VoxelMorph network predicts the deformation in one pass.

Training (`train_registration`) is unsupervised: every image of a folder is affinely aligned to the
first one and resampled on its grid, and the network learns to warp one into another under MONAI's
LNCC plus bending energy. At inference the affine stage runs first, the network predicts a
displacement on the fixed grid (in voxels, converted to LPS mm), and instance optimisation can
refine it. The model is a checkpoint with its card (task "registration"), loaded like any model.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..device import select_compute
from ..errors import InputError, ModelError
from ..image import Image
from ..models.loaded import checked_output, network_failures
from ..models.loading import LoadedModel
from ..outputs import OutputSet
from ..progress import Progress, no_progress, scaled
from ..tasks import require_task
from .fields import lps_points, sample
from .optimise import Registration, RegistrationResult, RegistrationSettings

MULTIPLE = 8  # the backbone pools three times


def voxelmorph_spec(channels: tuple[int, ...] = (16, 32, 32, 32)) -> dict:
    backbone = {"class": "VoxelMorphUNet", "args": {"spatial_dims": 3, "in_channels": 2, "unet_out_channels": 16,
                                                    "channels": list(channels), "final_conv_channels": [16]}}
    return {"class": "VoxelMorph", "args": {"backbone": backbone, "integration_steps": 7}}


def _padded(volume: torch.Tensor) -> torch.Tensor:
    pads = [p for size in reversed(volume.shape) for p in (0, -size % MULTIPLE)]
    return torch.nn.functional.pad(volume, pads)


def predict_displacement(network: torch.nn.Module, fixed: torch.Tensor, moving: torch.Tensor,
                         grid: Image, name: str = "") -> torch.Tensor:
    """(3, k, j, i) LPS mm displacement on the fixed grid from the network's voxel displacement.

    The network (VoxelMorph) returns (moved image, displacement); anything else is a ModelError naming `name`.
    """
    shape, padded = fixed.shape, (_padded(moving)[None, None], _padded(fixed)[None, None])
    with network_failures(name):
        output = network(*padded)
    if not isinstance(output, (tuple, list)) or len(output) != 2:
        raise ModelError(f"model {name!r} returned {type(output).__name__}, not (moved image, displacement)")
    voxels = checked_output(output[1], name, 1, 3, padded[0].shape[2:])
    voxels = voxels[0, :, : shape[0], : shape[1], : shape[2]]  # channels: (dk, dj, di)
    linear = torch.from_numpy(grid.index_to_lps()[:3, :3]).to(voxels)
    return torch.einsum("ab,b...->a...", linear, voxels.flip(0))


def learned_register(fixed: Image, moving: Image, model: LoadedModel, refine: bool = False,
                     settings: Optional[RegistrationSettings] = None,
                     progress: Optional[Progress] = None) -> RegistrationResult:
    """Affine stage, then the network's deformation; optionally refined by instance optimisation."""
    require_task(model.card, "registration")
    settings, report = settings or RegistrationSettings(), progress or no_progress
    with torch.enable_grad():
        registration = Registration(fixed, moving, settings, scaled(report, 0.0, 0.5))
        affine = registration.affine_stage().requires_grad_(False)
    network = model.networks["network"].to(registration.device).eval()
    points = lps_points(fixed).float().to(registration.device)
    with torch.no_grad():
        moving_on_fixed = sample(registration.moving_volume[None], moving, affine(points))[0]
        predicted = predict_displacement(network, registration.fixed_volume, moving_on_fixed, fixed, model.card.name)
    report(0.6, "deformation predicted")
    if refine:
        registration.report = scaled(report, 0.6, 1.0)
        return registration.run(affine, predicted.float())
    with torch.no_grad():
        total = (affine(points + predicted.permute(1, 2, 3, 0)) - points).double().cpu().numpy()
    return registration.result(total, affine)


@dataclass
class RegistrationTrainingSettings:
    steps: int = 300
    learning_rate: float = 1e-3
    smoothness: float = 1.0
    channels: tuple[int, ...] = (16, 32, 32, 32)
    time_budget_s: Optional[float] = None
    seed: int = 0
    device: str = "auto"


def dry_run(loaded: LoadedModel) -> None:
    """Register a small blob to a shifted copy on the CPU (the model library's check before it lists a model)."""
    if loaded.pipeline.get("type") == "monai-bundle":  # a registration bundle runs through its own workflow
        from .bundle_run import dry_run as bundle_dry_run

        return bundle_dry_run(loaded)
    k, j, i = np.meshgrid(*(np.arange(24.0),) * 3, indexing="ij")
    fixed = Image(np.exp(-((k - 12) ** 2 + (j - 12) ** 2 + (i - 12) ** 2) / 30.0).astype(np.float32))
    moving = fixed.with_array(np.roll(fixed.array, 1, axis=2))
    learned_register(fixed, moving, loaded, settings=RegistrationSettings(affine_iterations=2, device="cpu"))


def aligned_to_template(images: list[Image], device: torch.device, report: Progress) -> list[torch.Tensor]:
    """Every image affinely aligned to the first and resampled on its grid (intensities in [0, 1])."""
    template, aligned = images[0], []
    points = lps_points(template).float().to(device)
    for index, image in enumerate(images):
        registration = Registration(template, image, RegistrationSettings(device=str(device)), no_progress)
        if index == 0:
            aligned.append(registration.fixed_volume)
            continue
        with torch.enable_grad():
            affine = registration.affine_stage().requires_grad_(False)
        with torch.no_grad():
            aligned.append(sample(registration.moving_volume[None], image, affine(points))[0])
        report(index / len(images), f"affine alignment {index}/{len(images) - 1}")
    return aligned


def train_registration(images: list[Image], out: Path, settings: Optional[RegistrationTrainingSettings] = None,
                       progress: Optional[Progress] = None) -> Path:
    """Train a VoxelMorph network unsupervised on pairs of `images`; writes `out` (.pt) and its card (.json)."""
    from monai.losses import BendingEnergyLoss, LocalNormalizedCrossCorrelationLoss

    from ..models.networks import build_monai_network

    settings, report, out = settings or RegistrationTrainingSettings(), progress or no_progress, Path(out)
    if len(images) < 2:
        raise InputError("training a registration model needs at least two images")
    device = select_compute(settings.device).device
    volumes = [_padded(v) for v in aligned_to_template(images, device, scaled(report, 0.0, 0.2))]
    torch.manual_seed(settings.seed)
    generator = np.random.default_rng(settings.seed)
    spec = voxelmorph_spec(settings.channels)
    network = build_monai_network(spec, "registration training").to(device).train()
    optimiser = torch.optim.Adam(network.parameters(), lr=settings.learning_rate)
    similarity, bending = LocalNormalizedCrossCorrelationLoss(spatial_dims=3, kernel_size=5), BendingEnergyLoss()
    started = time.monotonic()
    for step in range(settings.steps):
        fixed_index, moving_index = generator.choice(len(volumes), 2, replace=False)
        fixed, moving = volumes[fixed_index][None, None], volumes[moving_index][None, None]
        optimiser.zero_grad()
        warped, displacement = network(moving, fixed)
        loss = similarity(warped, fixed) + settings.smoothness * bending(displacement)
        loss.backward()
        optimiser.step()
        if step % 10 == 0:
            report(0.2 + 0.8 * step / settings.steps, f"step {step}: loss {loss.item():.3f}")
        if settings.time_budget_s and time.monotonic() - started > settings.time_budget_s:
            break
    return _save(network.eval().cpu(), spec, out, len(images), images[0].shape)


def _save(network: torch.nn.Module, spec: dict, out: Path, count: int, shape: tuple) -> Path:
    card = {"name": out.stem, "task": "registration", "license": "trained by the user (see provenance)",
            "input": {"channels": 1, "intensity": {"method": "none"}}, "network": spec,
            "registration": {"similarity": "lncc", "template_shape": list(shape)},
            "provenance": f"meddl train-registration: unsupervised (LNCC + bending energy) on {count} images, "
                          "each affinely aligned to the first"}
    with OutputSet() as outputs:  # the weights and their card appear together
        torch.save(network.state_dict(), outputs.staged(out))
        outputs.staged(out.with_suffix(".json")).write_text(json.dumps(card, indent=1))
        outputs.commit()
    return out
