"""The noise read from the image itself (real MNI T1): its level and the Rician bias."""

from __future__ import annotations

import numpy as np
import pytest
from meddl.enhancement.noise import estimate_noise_sigma, rician_bias_correction
from meddl.io import read_image
from meddl_testing import rician


@pytest.fixture(scope="module")
def head(mni):
    """The whole MNI T1 (much background) and a crop inside the brain."""
    array = read_image(mni["t1"]).array.astype(np.float32)
    return array, array[60:124, 70:150, 62:134]


def test_noise_level_is_estimated_within_five_percent(head):
    whole, crop = head
    rng = np.random.default_rng(0)
    sigma = 0.05 * float(crop.max())
    assert estimate_noise_sigma(crop + rng.normal(0, sigma, crop.shape)) == pytest.approx(sigma, rel=0.05)
    # Rician noise on a head with background: the bright blocks give the noise of each channel
    noisy_head = rician(whole, 0.05)
    assert estimate_noise_sigma(noisy_head, rician=True) == pytest.approx(0.05 * float(whole.max()), rel=0.05)
    assert estimate_noise_sigma(noisy_head) < 0.9 * 0.05 * float(whole.max())  # the Rayleigh background pulls down


def test_rician_bias_correction_inverts_the_rician_mean():
    rng = np.random.default_rng(0)
    sigma, amplitudes = 10.0, np.array([0.0, 5.0, 10.0, 20.0, 40.0, 100.0, 1000.0])
    samples = np.abs(amplitudes[:, None] + rng.normal(0, sigma, (7, 200_000)) + 1j * rng.normal(0, sigma, (7, 200_000)))
    corrected = rician_bias_correction(samples.mean(axis=1).astype(np.float32), sigma)
    assert np.abs(corrected - amplitudes).max() < 0.05 * sigma + 1.0  # A = 0 and 5 sit in the flat part
    np.testing.assert_allclose(corrected[2:], amplitudes[2:], atol=0.15 * sigma)
    np.testing.assert_array_equal(rician_bias_correction(samples[:, 0].astype(np.float32), 0.0),
                                  samples[:, 0].astype(np.float32))
