"""Self-supervised denoising of one volume by blind-spot training (in the manner of Noise2Void / Noise2Self).

A small 3D UNet learns to predict voxels from their surroundings: in every training patch a few
voxels are replaced by a random neighbour's value and the loss counts only those voxels, so the
network never sees the value it predicts. Noise that is independent from voxel to voxel cannot be
predicted from the neighbours, the anatomy can: applied to the whole noisy volume, the network
returns the anatomy. The prediction then guides collaborative filtering of the observed image
(see `blockmatch`: similar blocks are found on the prediction, hard-thresholded together, then
Wiener-filtered with that first estimate as pilot), which restores what each voxel itself says,
and the Rician bias of magnitude images is removed (see `noise`). No clean data and no pretrained weights are needed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from scipy import ndimage

from ..device import select_compute
from ..errors import InputError
from ..image import Image
from ..models.card import card_from_dict
from ..models.loading import LoadedModel
from ..models.networks import build_monai_network
from ..progress import Progress, no_progress, scaled
from .blockmatch import Grouping, collaborative_filter
from .intensity import Scaling, checked_scalar_volume
from .noise import estimate_noise_sigma, rician_bias_correction
from .pretrained import denoiser_card, enhance_with_model, save_denoiser

NETWORK_STEPS = 300  # training steps of the blind-spot network when it is asked for without a count


@dataclass
class DenoiseSettings:
    steps: int = 0  # 0: the collaborative filter guided by a blur (the default: as good, 6x faster on CPU);
    # more: a blind-spot network trained on the image this many steps guides it instead
    patch: int = 32
    batch_size: int = 4
    blind_spot_share: float = 0.03  # voxels per patch hidden from the network and counted in the loss
    neighbourhood: int = 2  # a hidden voxel takes the value of a random voxel at most this far away
    channels: tuple[int, ...] = (24, 48, 96)
    learning_rate: float = 2e-3
    time_budget_s: Optional[float] = None
    flip_average: bool = True  # average the 8 axis flips at inference (about +0.8 dB)
    wiener_passes: int = 1  # grouped Wiener passes after the grouped hard thresholding, each pilot the last output
    noise: str = "auto"  # "rician" (MR magnitude), "gaussian", or "auto": rician when no voxel is negative
    seed: int = 0
    device: str = "auto"


def denoiser_spec(settings: DenoiseSettings) -> dict:
    """The network as a model card names it: a small MONAI UNet, one channel in and out."""
    return {"class": "UNet", "args": {"spatial_dims": 3, "in_channels": 1, "out_channels": 1,
                                      "channels": list(settings.channels),
                                      "strides": [2] * (len(settings.channels) - 1), "num_res_units": 1,
                                      "norm": None}}  # no instance norm: it would discard the intensity level


def blind_spot_batch(volume: torch.Tensor, settings: DenoiseSettings, generator: torch.Generator):
    """Patches, the same patches with hidden voxels replaced by neighbours, and the hidden-voxel mask."""
    size, patch = torch.tensor(volume.shape), settings.patch
    starts = (torch.rand(settings.batch_size, 3, generator=generator) * (size - patch + 1).clamp(min=1)).long()
    clean = torch.stack([volume[s[0]:s[0] + patch, s[1]:s[1] + patch, s[2]:s[2] + patch] for s in starts])[:, None]
    mask = torch.rand(clean.shape, generator=generator) < settings.blind_spot_share
    where = torch.nonzero(mask)
    reach = settings.neighbourhood
    offsets = torch.randint(-reach, reach + 1, (len(where), 3), generator=generator)
    offsets[(offsets == 0).all(dim=1), 0] = 1  # never the voxel itself
    source = where.clone()
    source[:, 2:] = (where[:, 2:] + offsets).clamp(min=0, max=patch - 1)
    masked = clean.clone()
    masked[tuple(where.T)] = clean[tuple(source.T)]
    return clean, masked, mask


def train_denoiser(volume: torch.Tensor, settings: DenoiseSettings, device: torch.device,
                   report: Progress) -> torch.nn.Module:
    """Blind-spot training on the (normalised) volume itself."""
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)

    network = build_monai_network(denoiser_spec(settings), "denoiser").to(device).train()
    optimiser = torch.optim.AdamW(network.parameters(), lr=settings.learning_rate)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, settings.learning_rate, total_steps=settings.steps)
    started = time.monotonic()
    for step in range(settings.steps):
        clean, masked, mask = (t.to(device) for t in blind_spot_batch(volume, settings, generator))
        optimiser.zero_grad()
        loss = torch.mean((network(masked)[mask] - clean[mask]) ** 2)
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % 20 == 0 or step == settings.steps - 1:
            report((step + 1) / settings.steps, f"learning the image: step {step + 1}/{settings.steps}")
        if settings.time_budget_s and time.monotonic() - started > settings.time_budget_s:
            break
    return network.eval()


def noise_model(array: np.ndarray, noise: str) -> str:
    """"rician" or "gaussian"; "auto" is Rician (MR magnitude) unless a voxel is negative."""
    if noise not in ("auto", "rician", "gaussian"):
        raise InputError(f"noise must be 'auto', 'rician' or 'gaussian', not {noise!r}")
    if noise == "auto":
        return "rician" if float(array.min()) >= 0.0 else "gaussian"
    return noise


def combine_with_observation(observed: np.ndarray, prediction: np.ndarray, sigma: float, settings: DenoiseSettings,
                             report: Progress) -> np.ndarray:
    """Collaborative filtering of the observed image guided by the prediction, then the Rician bias removed.

    Blocks are matched on the prediction in a wide window (every other shift up to 6 voxels) and
    hard-thresholded together; each Wiener pass matches and shrinks with the previous estimate.
    `settings.noise` is already resolved ("rician" or "gaussian") and `sigma` estimated for it.
    """
    stages = 1 + settings.wiener_passes
    estimate = collaborative_filter(observed, prediction, sigma, grouping=Grouping(reach=6, offset_step=2),
                                    progress=scaled(report, 0.0, 1.0 / stages))
    for done in range(1, stages):
        estimate = collaborative_filter(observed, estimate, sigma, pilot=estimate,
                                        progress=scaled(report, done / stages, (done + 1) / stages))
    return rician_bias_correction(estimate, sigma) if settings.noise == "rician" else estimate.astype(np.float32)


def _checked(array: np.ndarray, settings: DenoiseSettings, save_model: Optional[Path]) -> DenoiseSettings:
    """Settings checked against each other, the noise model resolved, the patch fitted to the volume."""
    settings = replace(settings, noise=noise_model(array, settings.noise))
    if settings.wiener_passes < 0 or settings.steps < 0:
        raise InputError("steps and wiener_passes must be 0 or more")
    if settings.steps == 0 and save_model:
        raise InputError("with 0 training steps there is no network to save")
    if min(array.shape) < settings.patch:
        settings = replace(settings, patch=max(4, 4 * (min(array.shape) // 4)))
    return settings


def network_prediction(image: Image, array: np.ndarray, settings: DenoiseSettings, report: Progress,
                       save_model: Optional[Path], sigma: float) -> np.ndarray:
    """The blind-spot network trained on the image and applied to it (flip-averaged); optionally saved."""

    volume = torch.from_numpy(Scaling.of(array).forward(array))
    compute = select_compute(settings.device)
    network = train_denoiser(volume, settings, compute.device, scaled(report, 0.0, 0.88))
    card = denoiser_card("self-supervised denoiser", denoiser_spec(settings), "-")
    model = LoadedModel(card_from_dict(card), {"network": network})
    prediction = enhance_with_model(image, model, str(compute.device), scaled(report, 0.88, 1.0),
                                    flip_average=settings.flip_average)
    if save_model:
        save_denoiser(network, denoiser_spec(settings), save_model, sigma, f"an image of shape {array.shape}")
    return prediction.array


def self_supervised_denoise(image: Image, settings: Optional[DenoiseSettings] = None,
                            progress: Optional[Progress] = None, save_model: Optional[Path] = None) -> Image:
    """A denoised copy of `image` on exactly its grid; the input is not changed.

    With `save_model`, the trained network is also written as a checkpoint with its card, so that
    images with similar noise can be denoised without training again. With 0 steps no network is
    trained: a Gaussian blur (1 voxel) guides the block matching instead, in seconds.
    """
    settings, report = settings or DenoiseSettings(), progress or no_progress
    array = checked_scalar_volume(image)
    settings = _checked(array, settings, save_model)
    sigma = estimate_noise_sigma(array, rician=settings.noise == "rician")
    if settings.steps:
        prediction = network_prediction(image, array, settings, scaled(report, 0.0, 0.85), save_model, sigma)
    else:
        prediction = ndimage.gaussian_filter(array, 1.0)
    return image.with_array(combine_with_observation(array, prediction, sigma, settings,
                                                     scaled(report, 0.85, 1.0)))
