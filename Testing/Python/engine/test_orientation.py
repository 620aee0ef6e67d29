"""Closest-canonical reordering agrees with nibabel for every axis permutation and flip."""

from __future__ import annotations

import itertools

import nibabel as nib
import numpy as np
import pytest
from meddl.image import Image
from meddl.orientation import Reorientation
from meddl_testing import oblique_direction

CASES = [(perm, signs) for perm in itertools.permutations(range(3))
         for signs in itertools.product((1, -1), repeat=3)]


def _image(permutation, signs, tilt=0.0) -> Image:
    axes = np.zeros((3, 3))
    for axis, (world, sign) in enumerate(zip(permutation, signs)):
        axes[world, axis] = sign
    direction = np.diag([-1.0, -1.0, 1.0]) @ oblique_direction(tilt) @ axes  # built in RAS, stored LPS
    array = np.random.default_rng(0).random((4, 5, 6)).astype(np.float32)
    return Image(array, (1.0, 2.0, 3.0), (1.0, 2.0, 3.0), direction)


@pytest.mark.parametrize(("permutation", "signs"), CASES)
@pytest.mark.parametrize("tilt", [0.0, 0.25])
def test_matches_nibabel_closest_canonical(permutation, signs, tilt):
    image = _image(permutation, signs, tilt)
    nifti = nib.Nifti1Image(image.array.transpose(2, 1, 0), image.index_to_ras())
    expected = np.asarray(nib.as_closest_canonical(nifti).dataobj)
    reorientation = Reorientation.of(image)
    np.testing.assert_array_equal(reorientation.to_canonical(image.array), expected)
    np.testing.assert_array_equal(reorientation.from_canonical(expected), image.array)
