"""Training segmentation models: held-out Dice, a bundle that reproduces it, fine-tuning, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from meddl.cli import main
from meddl.errors import InputError, OutputError
from meddl.image import Image
from meddl.io import write_image
from meddl.models.loading import load_model
from meddl.training.segmentation import SegmentationTrainingSettings, train_segmentation, validation_dice
from meddl_testing import mni_tissue_slabs

LABELS = {1: "grey matter", 2: "white matter"}
STATED_DICE = 0.5  # each tissue, on axial slabs 55+ of the 2 mm MNI T1 after training on slabs 0-45 (~30 s CPU)
SETTINGS = dict(patch_size=(32, 32, 32), steps_per_epoch=10, batch_size=4)


@pytest.fixture(scope="module")
def slabs(mni):
    train, val = mni_tissue_slabs(mni, (0, 45), (55, 95))
    return [train], [val]


@pytest.fixture(scope="module")
def trained(slabs, tmp_path_factory):
    train, val = slabs
    return train_segmentation(train, LABELS, tmp_path_factory.mktemp("bundles") / "tissue",
                              SegmentationTrainingSettings(epochs=40, **SETTINGS), val, data_description="MNI slabs")


def test_reaches_stated_dice_on_a_part_no_training_patch_touched(trained, slabs):
    (train_image, _), = slabs[0]
    (val_image, _), = slabs[1]
    train_top = (train_image.index_to_lps() @ [0, 0, train_image.shape[0] - 1, 1])[2]
    val_bottom = (val_image.index_to_lps() @ [0, 0, 0, 1])[2]
    assert val_bottom - train_top >= 10 * train_image.spacing[2]  # the slabs are apart: a gap of 10 slices
    assert min(trained.validation_dice.values()) >= STATED_DICE


def test_bundle_loads_in_the_segmentation_path_and_reproduces_its_dice(trained, slabs):
    loaded = load_model(trained.folder)  # no trust needed: the written configs hold no expressions
    assert [label.name for label in loaded.card.labels] == ["grey matter", "white matter"]
    assert validation_dice(loaded, slabs[1], LABELS) == pytest.approx(trained.validation_dice, abs=1e-9)
    stated = {a["metric"]: a["value"] for a in loaded.card.accuracy}
    assert stated["Dice grey matter"] == pytest.approx(trained.validation_dice["grey matter"], abs=1e-4)


def test_fine_tuning_starts_from_the_given_weights(trained, slabs, tmp_path):
    train, val = slabs
    short = SegmentationTrainingSettings(epochs=1, **SETTINGS)
    scratch = train_segmentation(train, LABELS, tmp_path / "scratch", short, val)
    tuned = train_segmentation(train, LABELS, tmp_path / "tuned",
                               SegmentationTrainingSettings(epochs=1, init_from=str(trained.folder), **SETTINGS), val)
    assert np.mean(list(tuned.validation_dice.values())) > np.mean(list(scratch.validation_dice.values()))


def _pair(shape=(8, 8, 8), value=1, spacing=(1.0, 1.0, 1.0)):
    label = np.zeros(shape, np.uint8)
    label[2:4, 2:4, 2:4] = value
    return Image(np.ones(shape, np.float32)), Image(label, spacing)


@pytest.mark.parametrize(("pairs", "message"), [
    ([], "no training pairs"),
    ([_pair(spacing=(2.0, 1.0, 1.0))], "not on the image's grid"),
    ([_pair(value=0)], "label map is empty"),
    ([_pair(value=3)], r"label value\(s\) \[3\] are not named"),
])
def test_bad_training_input_is_refused_before_training(pairs, message, tmp_path):
    with pytest.raises(InputError, match=message):
        train_segmentation(pairs, LABELS, tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_output_folder_must_be_new(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(OutputError, match="not empty"):
        train_segmentation([_pair()], LABELS, tmp_path / "taken")


def test_command_line(slabs, tmp_path):
    (image, label), = slabs[0]
    write_image(image, tmp_path / "image.nii.gz")
    write_image(label, tmp_path / "label.nii.gz")
    assert main(["train", "--images", str(tmp_path / "image.nii.gz"), "--labels", str(tmp_path / "label.nii.gz"),
                 "--label-names", "1:grey matter,2:white matter", "--out", str(tmp_path / "bundle"),
                 "--epochs", "1", "--steps-per-epoch", "2", "--patch-size", "32,32,32", "--progress", "none"]) == 0
    assert main(["segment", str(tmp_path / "image.nii.gz"), str(tmp_path / "seg.nii.gz"), "--model",
                 str(tmp_path / "bundle"), "--progress", "none"]) == 0
    assert main(["train", "--images", str(tmp_path / "image.nii.gz"), "--labels", str(tmp_path / "label.nii.gz"),
                 "--label-names", "1:grey matter", "--out", str(tmp_path / "b2"), "--progress", "none"]) == 3



def test_fine_tuning_from_a_model_of_another_shape_is_a_clear_model_error(trained, tmp_path):
    from meddl.errors import ModelError

    with pytest.raises(ModelError, match="do not match the network UNet"):
        train_segmentation([_pair()], {1: "one label only"}, tmp_path / "mismatch",
                           SegmentationTrainingSettings(init_from=str(trained.folder), **SETTINGS))
    assert not (tmp_path / "mismatch").exists()
