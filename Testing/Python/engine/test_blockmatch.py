"""Collaborative filtering of similar blocks on the real MNI T1: what each stage earns, grids, memory slabs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from meddl.enhancement import blockmatch
from meddl.enhancement.blockmatch import Grouping, collaborative_filter, dct_matrix
from meddl.io import read_image
from meddl_testing import psnr
from scipy import ndimage

SIGMA = 0.05


@pytest.fixture(scope="module")
def clean_and_noisy(mni):
    """A 1 mm crop inside the brain with Gaussian noise at 5 % of the maximum."""
    clean = read_image(mni["t1"]).array.astype(np.float32)[60:108, 70:126, 62:110]
    sigma = SIGMA * float(clean.max())
    return clean, clean + np.random.default_rng(0).normal(0, sigma, clean.shape).astype(np.float32), sigma


def test_dct_matrix_is_orthonormal():
    for size in (1, 4, 32):
        matrix = dct_matrix(size)
        np.testing.assert_allclose(matrix @ matrix.T, np.eye(size), atol=1e-5)


def test_block_sums_on_an_irregular_grid_match_direct_sums():
    values = torch.from_numpy(np.random.default_rng(1).random((11, 9, 7), dtype=np.float32))
    starts = [torch.tensor([1, 4, 7]), torch.tensor([0, 3, 5]), torch.tensor([3])]  # runs of step 3, then a last start
    runs = [blockmatch._arithmetic_runs(axis_starts, 3) for axis_starts in starts]
    sums = blockmatch._block_sums(values, (4, 4, 4), runs, 3)
    direct = [[[values[k:k + 4, j:j + 4, i:i + 4].sum() for i in starts[2]] for j in starts[1]] for k in starts[0]]
    np.testing.assert_allclose(sums.numpy(), np.array(direct), rtol=1e-5)


def test_hard_thresholding_then_wiener_each_remove_more_noise(clean_and_noisy):
    clean, noisy, sigma = clean_and_noisy
    blurred = ndimage.gaussian_filter(noisy, 1.0)
    hard = collaborative_filter(noisy, blurred, sigma)
    wiener = collaborative_filter(noisy, hard, sigma, pilot=hard)
    assert hard.shape == clean.shape and hard.dtype == np.float32
    assert psnr(hard, clean) >= max(psnr(noisy, clean), psnr(blurred, clean)) + 3.0
    assert psnr(wiener, clean) >= psnr(hard, clean) + 0.5
    # the pilot matters: the clean image as pilot gives a much better Wiener stage than the noisy one
    assert psnr(collaborative_filter(noisy, clean, sigma, pilot=clean), clean) >= \
        psnr(collaborative_filter(noisy, noisy, sigma, pilot=noisy), clean) + 3.0


def test_without_noise_the_image_comes_back_unchanged(clean_and_noisy):
    clean, _, _ = clean_and_noisy
    np.testing.assert_allclose(collaborative_filter(clean, clean, 1e-3, pilot=clean), clean, atol=0.05)


def test_slabs_and_chunks_give_the_same_result_as_one_pass(clean_and_noisy, monkeypatch):
    clean, noisy, sigma = clean_and_noisy
    crop, guide = noisy[:20, :24, :24], clean[:20, :24, :24]
    whole = collaborative_filter(crop, guide, sigma, grouping=Grouping(reach=2))
    monkeypatch.setattr(blockmatch, "REFERENCES_PER_SLAB", 1)  # one row of references per slab
    monkeypatch.setattr(blockmatch, "GROUP_ELEMENTS_PER_CHUNK", 1)  # one group per chunk
    np.testing.assert_allclose(collaborative_filter(crop, guide, sigma, grouping=Grouping(reach=2)), whole,
                               rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("shape", [(1, 20, 24), (3, 5, 7), (2, 2, 2)])
def test_thin_and_tiny_volumes_are_filtered_on_their_own_grid(shape):
    image = np.random.default_rng(1).normal(100.0, 5.0, shape).astype(np.float32)
    result = collaborative_filter(image, image, 5.0, pilot=image)
    assert result.shape == shape and np.isfinite(result).all()
    assert abs(float(result.mean() - image.mean())) < 2.0
