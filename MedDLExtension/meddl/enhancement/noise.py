"""The noise in one image, read from the image itself: its level, and the Rician bias of MR magnitude.

The level comes from the finest 3D Haar detail band, which anatomy hardly reaches and noise fills.
Noise in MR magnitude images is Rician, which lifts dark regions; `rician_bias_correction` maps
an estimated mean back to the underlying intensity. Nothing has to be known in advance.
"""

from __future__ import annotations

import numpy as np
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
