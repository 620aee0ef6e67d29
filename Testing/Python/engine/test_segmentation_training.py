"""Training segmentation models: held-out Dice, a bundle that reproduces it, fine-tuning, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from meddl.cli import main
from meddl.errors import InputError, OutputError
from meddl.image import Image
from meddl.io import write_image
from meddl.models.loading import load_model
from meddl.segmentation.training import SegmentationTrainingSettings, train_segmentation, validation_dice
from meddl_testing import mni_tissue_slabs, mni_tissue_volume

LABELS = {1: "grey matter", 2: "white matter"}
STATED_DICE = 0.5  # each tissue, on axial slabs 55+ of the 2 mm MNI T1 after training on slabs 0-45 (~30 s CPU)
FEW_SHOT_DICE = 0.8  # each tissue, on the unlabelled slices, from every 10th labelled axial slice (~10 s CPU)
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


@pytest.fixture(scope="module")
def every_tenth_slice(mni):
    """The 2 mm MNI T1 with only every 10th axial slice labelled (10% of the slices the brain spans)."""
    image, label = mni_tissue_volume(mni)
    spanned = np.flatnonzero(label.array.any(axis=(1, 2)))
    labelled = spanned[::10]
    sparse = np.zeros_like(label.array)
    sparse[labelled] = label.array[labelled]
    return image, label, label.with_array(sparse), np.setdiff1d(spanned, labelled)


FEW_SHOT = dict(epochs=10, steps_per_epoch=10)


def unlabelled_dice(bundle, every_tenth_slice) -> dict[int, float]:
    from meddl.segmentation.metrics import dice
    from meddl.segmentation.predict import segment

    image, truth, _, unlabelled = every_tenth_slice
    predicted = segment(image, load_model(bundle), device="cpu").labels.array
    return {value: dice(predicted[unlabelled] == value, truth.array[unlabelled] == value) for value in LABELS}


@pytest.fixture(scope="module")
def few_shot(every_tenth_slice, tmp_path_factory):
    image, _, sparse, _ = every_tenth_slice
    return train_segmentation([(image, sparse)], LABELS, tmp_path_factory.mktemp("few") / "few-shot",
                              SegmentationTrainingSettings(batch_size=8, **FEW_SHOT))


def test_few_shot_from_every_tenth_slice_segments_the_other_slices(few_shot, every_tenth_slice):
    assert few_shot.slice_axis == 2  # the axial (k) axis, detected from the labels alone
    assert min(unlabelled_dice(few_shot.folder, every_tenth_slice).values()) >= FEW_SHOT_DICE


def test_unlabelled_slices_never_reach_the_loss(every_tenth_slice):
    from meddl.segmentation.patches import PatchDataset, sparse_axis

    _, _, sparse, _ = every_tenth_slice
    labelled = set(np.flatnonzero(sparse.array.any(axis=(1, 2))).tolist())
    slice_index = np.broadcast_to(np.arange(sparse.shape[0], dtype=np.float32)[:, None, None], sparse.shape)
    volume = (torch.from_numpy(np.ascontiguousarray(slice_index.T)), torch.from_numpy(sparse.array.T.astype(np.int64)))
    assert sparse_axis(volume[1].numpy()) == 2
    dataset = PatchDataset([volume], (32, 32, 1), length=200, slice_axis=2)
    seen = {int(x.max()) for x, _ in (dataset[n] for n in range(200))}
    assert seen <= labelled and len(seen) > 1


def test_dense_labels_train_in_3d(slabs):
    from meddl.segmentation.training import choose_slice_axis

    assert choose_slice_axis(slabs[0], "auto") is None


def test_two_process_gloo_training_gives_the_same_kind_of_bundle(few_shot, every_tenth_slice, tmp_path):
    """`torchrun --nproc_per_node 2 -m meddl train ...` on CPU: DDP over gloo with a distributed sampler.

    Each process takes half of each epoch's patches (batch 4 each, the single run's 8 in all).
    """
    import os
    import subprocess
    import sys

    image, _, sparse, _ = every_tenth_slice
    image_path, label_path = write_image(image, tmp_path / "t1.nii.gz"), write_image(sparse, tmp_path / "l.nii.gz")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "meddl", "train", "--images", str(image_path), "--labels", str(label_path),
               "--label-names", "1:grey matter,2:white matter", "--out", str(tmp_path / "ddp"),
               "--epochs", str(FEW_SHOT["epochs"]), "--steps-per-epoch", str(FEW_SHOT["steps_per_epoch"]),
               "--batch-size", "4", "--progress", "json"]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert sum('"event": "done"' in line for line in finished.stdout.splitlines()) == 1  # rank 0 reports
    assert load_model(tmp_path / "ddp").card.network == load_model(few_shot.folder).card.network
    single, ddp = unlabelled_dice(few_shot.folder, every_tenth_slice), unlabelled_dice(tmp_path / "ddp",
                                                                                        every_tenth_slice)
    assert min(ddp.values()) >= FEW_SHOT_DICE
    assert abs(np.mean(list(ddp.values())) - np.mean(list(single.values()))) < 0.05


def test_a_run_stopped_midway_leaves_the_best_checkpoint_whole(slabs, tmp_path):
    """Cancel kills the worker at any moment: the bundle of the best validation so far must be on disk."""
    train, val = slabs

    def stop_after_second_epoch(fraction, message):
        if message.startswith("epoch 2"):
            raise KeyboardInterrupt

    settings = SegmentationTrainingSettings(epochs=5, validate_every=1, **{**SETTINGS, "steps_per_epoch": 2})
    with pytest.raises(KeyboardInterrupt):
        train_segmentation(train, LABELS, tmp_path / "stopped", settings, val, progress=stop_after_second_epoch)
    loaded = load_model(tmp_path / "stopped")
    assert "weights of epoch" in loaded.card.provenance
    assert [p.name for p in tmp_path.iterdir()] == ["stopped"]  # no staging folder left behind


def test_default_patch_follows_the_data_size_and_spacing():
    from meddl.segmentation.training import default_patch_size

    thin = Image(np.zeros((200, 256, 256), np.float32), (0.8, 0.8, 1.0))  # (i, j, k) spacing
    thick = Image(np.zeros((30, 256, 256), np.float32), (0.8, 0.8, 5.0))
    small = Image(np.zeros((20, 40, 40), np.float32), (2.0, 2.0, 2.0))
    assert default_patch_size([thin], 3) == (80, 80, 64)
    assert default_patch_size([thick], 3) == (80, 80, 16)  # 64 mm / 5 mm = 13 -> at least 16 slices
    assert default_patch_size([small], 3) == (32, 32, 24)  # 20 slices: 24, the next multiple of 8
