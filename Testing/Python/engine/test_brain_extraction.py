"""The default model on the real MNI152 T1: agrees with deepbet's own pipeline, reaches its card's Dice."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from meddl.image import Image
from meddl.io import read_image, write_image
from meddl.models import catalog
from meddl.sample_data import reference_brain_mask
from meddl.segmentation.metrics import dice
from meddl.segmentation.predict import segment, segment_file

MODEL = "deepbet-brain-extraction"


@pytest.fixture(scope="module")
def reference(mni):
    return reference_brain_mask(read_image(mni["gm"]).array, read_image(mni["wm"]).array)


@pytest.fixture(scope="module")
def meddl_mask(mni, tmp_path_factory):
    output = tmp_path_factory.mktemp("meddl") / "brain.nii.gz"
    segment_file(mni["t1"], output, MODEL, device="cpu")
    return read_image(output).array > 0


@pytest.fixture(scope="module")
def deepbet_mask(mni, tmp_path_factory):
    import deepbet  # installed by the Makefile (--no-deps, plus cc3d, fill_voids, tqdm): never skipped

    output = tmp_path_factory.mktemp("deepbet") / "mask.nii.gz"
    deepbet.run_bet([str(mni["t1"])], mask_paths=[str(output)], no_gpu=True)
    return read_image(output).array > 0


def test_agrees_with_deepbet_run_bet(meddl_mask, deepbet_mask):
    assert dice(meddl_mask, deepbet_mask) >= 0.99


def test_both_reach_reference_dice(meddl_mask, deepbet_mask, reference):
    assert dice(meddl_mask, reference) >= 0.93
    assert dice(deepbet_mask, reference) >= 0.93


def test_reaches_the_dice_its_card_states(meddl_mask, reference):
    stated = catalog.get_entry(MODEL)["card"]["accuracy"][0]["value"]
    assert round(dice(meddl_mask, reference), 3) >= stated


def test_result_follows_the_anatomy_not_the_voxel_order(mni, meddl_mask, tmp_path):
    """The same T1 stored LPI with axes swapped segments to the same brain in world space."""
    t1 = read_image(mni["t1"])
    flipped = np.ascontiguousarray(t1.array[::-1, :, ::-1].transpose(1, 0, 2))  # (j, k, i) order, k and i flipped
    index_to_lps = t1.index_to_lps()
    # new voxel (i', j', k') = old (n_i-1-i', k'..): rebuild the matrix for the permuted, flipped grid
    n_k, n_j, n_i = t1.shape
    new_to_old = np.array([[-1, 0, 0, n_i - 1], [0, 0, 1, 0], [0, -1, 0, n_k - 1], [0, 0, 0, 1]], float)
    matrix = index_to_lps @ new_to_old
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    moved = Image(flipped, spacing, matrix[:3, 3], matrix[:3, :3] / spacing)
    path = write_image(moved, tmp_path / "moved.nii.gz")
    labels = segment(read_image(path), MODEL, device="cpu").labels.array
    back = labels.transpose(1, 0, 2)[::-1, :, ::-1]
    assert dice(back > 0, meddl_mask) >= 0.99
    assert nib.aff2axcodes(nib.load(str(path)).affine) != ("R", "A", "S")


def test_reference_uses_probabilities_not_raw_bytes(mni):
    """nilearn stores the tissue maps as 0..255: 'probability > 0.5' must mean a value above 127.5."""
    from meddl.sample_data import tissue_probability

    gm = read_image(mni["gm"]).array
    assert gm.dtype == np.uint8 and tissue_probability(gm).max() == pytest.approx(1.0)
