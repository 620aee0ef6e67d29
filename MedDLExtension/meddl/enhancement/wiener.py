"""Combining a denoiser's prediction with the observed voxels: noise level, empirical Wiener filter, Rician bias.

A blind-spot network predicts each voxel from its neighbours only, so its prediction throws away
what the voxel itself says. The empirical Wiener filter puts it back: in small sliding DCT blocks
the observed image's coefficients are shrunk by P^2 / (P^2 + sigma^2), P being the prediction's
coefficient (the "pilot", as in the second stage of BM3D), and the overlapping blocks are averaged.
Repeating the filter with its own output as the next pilot refines it. Noise in MR magnitude images
is Rician, which lifts dark regions; the last step maps the estimated mean back to the underlying
intensity. The noise level is estimated from the image, so nothing has to be known in advance.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.special import i0e, i1e

MEDIAN_ABS_TO_SIGMA = 1.0 / 0.6745  # median(|N(0, s^2)|) = 0.6745 s


def _pairs(array: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    return np.take(array, range(0, array.shape[axis], 2), axis), np.take(array, range(1, array.shape[axis], 2), axis)


def _haar_detail_and_mean(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The finest 3D Haar detail band (differences along every axis) and the matching block means."""
    detail = mean = array[tuple(slice(0, n // 2 * 2) for n in array.shape)].astype(np.float64)
    for axis in range(3):
        even, odd = _pairs(detail, axis)
        detail = (even - odd) / np.sqrt(2.0)
        mean = sum(_pairs(mean, axis)) / 2
    return detail, mean


def estimate_noise_sigma(array: np.ndarray, rician: bool = False) -> float:
    """Standard deviation of voxel-independent noise, from the median of the finest Haar detail band.

    Anatomy hardly reaches that band; noise fills it. With `rician`, only bright blocks count (where
    magnitude noise is close to Gaussian), not the background, where it is Rayleigh and smaller.
    """
    if min(array.shape) < 2:
        return 0.0
    detail, mean = _haar_detail_and_mean(array)
    sigma = float(np.median(np.abs(detail))) * MEDIAN_ABS_TO_SIGMA
    if rician and sigma > 0:
        bright = mean > 3.0 * sigma
        if bright.sum() >= 1000:
            sigma = float(np.median(np.abs(detail[bright]))) * MEDIAN_ABS_TO_SIGMA
    return sigma


def _dct_matrix(size: int) -> torch.Tensor:
    """The orthonormal DCT-II matrix (rows are basis vectors)."""
    k = np.arange(size)
    matrix = np.cos(np.pi * (2 * k[None] + 1) * k[:, None] / (2 * size)) * np.sqrt(2.0 / size)
    matrix[0] /= np.sqrt(2.0)
    return torch.tensor(matrix, dtype=torch.float32)


def _to_blocks(volume: torch.Tensor, size: int) -> torch.Tensor:
    k, j, i = (n // size for n in volume.shape)
    return volume.reshape(k, size, j, size, i, size).permute(0, 2, 4, 1, 3, 5)


def _from_blocks(blocks: torch.Tensor) -> torch.Tensor:
    k, j, i, size = blocks.shape[:4]
    return blocks.permute(0, 3, 1, 4, 2, 5).reshape(k * size, j * size, i * size)


def dct_wiener(noisy: np.ndarray, pilot: np.ndarray, sigma: float, block: int = 4) -> np.ndarray:
    """Empirical Wiener filter of `noisy` in every (block^3) DCT block, shrinkage taken from `pilot`.

    Every voxel offset starts a block (full overlap); blocks are averaged with BM3D's weights
    (the inverse of the summed squared shrinkage, i.e. of the noise left in the block).
    """
    dct = _dct_matrix(block)
    pad = [(block, block)] * 3
    observed = torch.from_numpy(np.pad(noisy.astype(np.float32), pad, mode="reflect"))
    prior = torch.from_numpy(np.pad(pilot.astype(np.float32), pad, mode="reflect"))
    total, weights = torch.zeros_like(observed), torch.zeros_like(observed)
    forward, inverse = "...abc,ia,jb,kc->...ijk", "...ijk,ia,jb,kc->...abc"
    for start in np.ndindex(block, block, block):
        region = tuple(slice(s, s + (n - s) // block * block) for s, n in zip(start, observed.shape))
        coefficients = torch.einsum(forward, _to_blocks(observed[region], block), dct, dct, dct)
        prior_power = torch.einsum(forward, _to_blocks(prior[region], block), dct, dct, dct) ** 2
        shrinkage = prior_power / (prior_power + sigma * sigma)
        filtered = torch.einsum(inverse, shrinkage * coefficients, dct, dct, dct)
        weight = 1.0 / (shrinkage**2).sum(dim=(-3, -2, -1), keepdim=True).clamp(min=1e-3)
        total[region] += _from_blocks(filtered * weight)
        weights[region] += _from_blocks(weight.expand_as(filtered))
    inner = (slice(block, -block),) * 3
    return (total[inner] / weights[inner]).numpy()


def rician_bias_correction(array: np.ndarray, sigma: float) -> np.ndarray:
    """The underlying intensity A whose Rician mean E|A + noise| is `array` (noise sigma per channel).

    E = sigma sqrt(pi/2) L_1/2(-A^2 / 2 sigma^2) is inverted by interpolation; values at or below the
    mean of pure noise (A = 0) map to 0, and far above it E^2 = A^2 + sigma^2 is used.
    """
    if sigma <= 0:
        return array.astype(np.float32)
    amplitude = np.linspace(0.0, 40.0 * sigma, 4000)
    x = amplitude**2 / (4.0 * sigma**2)
    rician_mean = sigma * np.sqrt(np.pi / 2) * ((1 + 2 * x) * i0e(x) + 2 * x * i1e(x))
    corrected = np.interp(array, rician_mean, amplitude, left=0.0)
    high = array >= rician_mean[-1]
    corrected[high] = np.sqrt(array[high].astype(np.float64) ** 2 - sigma**2)
    return corrected.astype(np.float32)
