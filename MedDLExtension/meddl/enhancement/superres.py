"""Self-supervised through-plane super-resolution of an anisotropic volume (in the manner of SMORE).

The thick-slice axis lacks detail the in-plane axes have. Degrading the in-plane axes the way the
scanner degraded the through-plane axis (a slice profile of one slice spacing, then every f-th
sample, then cubic B-spline interpolation back) gives training pairs from the volume itself; a 2D
network learns to undo that degradation and is then applied along the through-plane axis, in the
two planes that contain it, averaged. The slice profile is assumed Gaussian with a full width at
half maximum of one slice spacing.

Output grid: along the through-plane axis the spacing is divided by the factor f and the first
voxel centre stays where it was, so output sample k*f lies exactly on input slice k.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from scipy import ndimage

from ..device import select_compute
from ..errors import InputError
from ..image import Image
from ..progress import Progress, no_progress, scaled
from .intensity import Scaling, checked_scalar_volume

FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


@dataclass
class SuperResolutionSettings:
    factor: Optional[int] = None  # default: the through-plane spacing over the in-plane spacing, rounded
    steps: int = 500
    patch: int = 64
    batch_size: int = 16
    channels: tuple[int, ...] = (32, 64, 128)
    learning_rate: float = 2e-3
    time_budget_s: Optional[float] = None
    seed: int = 0
    device: str = "auto"


def through_plane_axis(image: Image) -> int:
    """The array (k, j, i) axis with the thickest spacing."""
    return int(np.argmax(np.asarray(image.spacing)[::-1]))


def upsampling_factor(image: Image, factor: Optional[int]) -> int:
    spacing = np.asarray(image.spacing)[::-1]
    axis = int(np.argmax(spacing))
    thin = np.delete(spacing, axis).max()
    chosen = int(round(spacing[axis] / thin)) if factor is None else int(factor)
    if chosen < 2:
        raise InputError(f"the volume is not anisotropic enough to super-resolve (spacing {tuple(image.spacing)} mm); "
                         "its thickest spacing should be at least twice its in-plane spacing, or give --factor")
    return chosen


def cubic_upsample(array: np.ndarray, axis: int, factor: int) -> np.ndarray:
    """Cubic B-spline interpolation along `axis` onto the grid with sample k*factor on input sample k."""
    length = array.shape[axis]
    zoom = [1.0] * array.ndim
    zoom[axis] = ((length - 1) * factor + 1) / length
    return ndimage.zoom(array, zoom, order=3, mode="nearest", grid_mode=False)


def degrade(array: np.ndarray, axis: int, factor: int) -> np.ndarray:
    """The slice-profile blur and subsampling of a thick-slice acquisition along `axis`, then cubic back."""
    usable = (array.shape[axis] - 1) // factor * factor + 1
    array = np.take(array, range(usable), axis=axis)
    blurred = ndimage.gaussian_filter1d(array, factor * FWHM_TO_SIGMA, axis=axis, mode="nearest")
    return cubic_upsample(np.take(blurred, range(0, usable, factor), axis=axis), axis, factor)


def superres_network(settings: SuperResolutionSettings) -> torch.nn.Module:
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=1, out_channels=1, channels=settings.channels,
                strides=[2] * (len(settings.channels) - 1), num_res_units=2, norm=None)


def training_planes(volume: np.ndarray, axis: int, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """(degraded, original) in-plane slices, the degraded direction always first (rows)."""
    inputs, targets = [], []
    planes = np.moveaxis(volume, axis, 0)  # (slices, a, b): both a and b are high resolution
    for degraded_axis in (1, 2):
        stack = planes if degraded_axis == 1 else np.swapaxes(planes, 1, 2)
        degraded = degrade(stack, 1, factor)
        inputs.append(degraded)
        targets.append(stack[:, : degraded.shape[1]])
    return inputs, targets


def _patches(inputs, targets, settings: SuperResolutionSettings, generator: np.random.Generator):
    xs, ys = [], []
    for _ in range(settings.batch_size):
        which = generator.integers(len(inputs))
        x, y = inputs[which], targets[which]
        s = generator.integers(x.shape[0])
        r = generator.integers(max(1, x.shape[1] - settings.patch + 1))
        c = generator.integers(max(1, x.shape[2] - settings.patch + 1))
        window = (s, slice(r, r + settings.patch), slice(c, c + settings.patch))
        xs.append(_pad2d(x[window], settings.patch))
        ys.append(_pad2d(y[window], settings.patch))
    return torch.from_numpy(np.stack(xs)[:, None]), torch.from_numpy(np.stack(ys)[:, None])


def _pad2d(plane: np.ndarray, size: int) -> np.ndarray:
    return np.pad(plane, [(0, size - plane.shape[0]), (0, size - plane.shape[1])], mode="edge")


def train_superres(volume: np.ndarray, axis: int, factor: int, settings: SuperResolutionSettings,
                   device: torch.device, report: Progress) -> torch.nn.Module:
    """Learn to undo the through-plane degradation from the in-plane data (residual on cubic)."""
    torch.manual_seed(settings.seed)
    generator = np.random.default_rng(settings.seed)
    inputs, targets = training_planes(volume, axis, factor)
    network = superres_network(settings).to(device).train()
    optimiser = torch.optim.AdamW(network.parameters(), lr=settings.learning_rate)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, settings.learning_rate, total_steps=settings.steps)
    started = time.monotonic()
    for step in range(settings.steps):
        x, y = (t.to(device) for t in _patches(inputs, targets, settings, generator))
        optimiser.zero_grad()
        loss = torch.nn.functional.l1_loss(x + network(x), y)
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % 20 == 0 or step == settings.steps - 1:
            report((step + 1) / settings.steps, f"learning from the in-plane data: step {step + 1}/{settings.steps}")
        if settings.time_budget_s and time.monotonic() - started > settings.time_budget_s:
            break
    return network.eval()


def _apply_planes(network, upsampled: np.ndarray, device: torch.device, batch: int = 8) -> np.ndarray:
    """Run the network on every plane of (planes, rows = through-plane, cols); rows and cols padded to 4."""
    planes, rows, cols = upsampled.shape
    padded = np.pad(upsampled, [(0, 0), (0, -rows % 4), (0, -cols % 4)], mode="edge")
    out = np.empty_like(upsampled)
    with torch.inference_mode():
        for start in range(0, planes, batch):
            x = torch.from_numpy(padded[start:start + batch, None]).to(device)
            out[start:start + batch] = (x + network(x)).cpu().numpy()[:, 0, :rows, :cols]
    return out


def self_supervised_superres(image: Image, settings: Optional[SuperResolutionSettings] = None,
                             progress: Optional[Progress] = None) -> Image:
    """A copy of `image` with the through-plane spacing divided by the factor; the input is not changed."""

    settings, report = settings or SuperResolutionSettings(), progress or no_progress
    array = checked_scalar_volume(image)
    if settings.steps < 1:
        raise InputError(f"super-resolution needs at least 1 training step, not {settings.steps}")
    axis, factor = through_plane_axis(image), upsampling_factor(image, settings.factor)
    scaling = Scaling.of(array)
    volume = scaling.forward(array)
    device = select_compute(settings.device).device
    network = train_superres(volume, axis, factor, settings, device, scaled(report, 0.0, 0.8))
    upsampled = np.moveaxis(cubic_upsample(volume, axis, factor), axis, 0)  # (through, a, b)
    report(0.85, "super-resolving along the thick axis")
    along_a = _apply_planes(network, np.ascontiguousarray(np.moveaxis(upsampled, 2, 0)), device)  # (b, through, a)
    report(0.92, "super-resolving along the thick axis")
    along_b = _apply_planes(network, np.ascontiguousarray(np.moveaxis(upsampled, 1, 0)), device)  # (a, through, b)
    result = 0.5 * (np.moveaxis(along_a, 0, 2) + np.moveaxis(along_b, 0, 1))  # (through, a, b)
    report(1.0, "done")
    return upsampled_image(image, scaling.back(np.moveaxis(result, 0, axis)), axis, factor)


def upsampled_image(image: Image, array: np.ndarray, axis: int, factor: int) -> Image:
    """`array` on `image`'s grid refined `factor` times along array axis `axis` (first voxel centre kept)."""
    spacing = list(image.spacing)
    spacing[2 - axis] /= factor  # spacing is (x, y, z) = (i, j, k); array axes are (k, j, i)
    return Image(np.ascontiguousarray(array, dtype=np.float32), tuple(spacing), image.origin, image.direction)
