"""Classification: training on real data reaches a stated AUC, inference equals the network, 2D orientation."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from meddl.classification import metrics
from meddl.classification.predict import classify, prepare, saliency
from meddl.classification.training import TrainingSettings, train_classifier
from meddl.cli import main
from meddl.errors import InputError, ModelError
from meddl.image import Image
from meddl.io import read_image, write_image
from meddl.models.loading import load_model
from meddl_testing import mni_tissue_patches
from sklearn import metrics as sk

STATED_AUC = 0.95  # grey vs white matter, trained on axial slices 40-90 of the MNI T1, tested on 110-150


@pytest.fixture(scope="module")
def trained(mni, tmp_path_factory):
    images, labels = mni_tissue_patches(mni, (40, 90), 150)
    result = train_classifier(images, labels, ["grey matter", "white matter"],
                              tmp_path_factory.mktemp("classifier") / "tissue", TrainingSettings(epochs=15, seed=0),
                              data_description="MNI152 T1 patches, axial slices 40-90")
    return result


@pytest.fixture(scope="module")
def held_out(mni):
    return mni_tissue_patches(mni, (110, 150), 100, seed=1)


def test_reaches_stated_auc_on_a_region_no_training_patch_touched(trained, held_out):
    images, labels = held_out
    results = classify(images, str(trained.folder / "model.pt"), device="cpu")
    probabilities = np.array([r.probabilities for r in results])
    assert metrics.roc_auc(np.array(labels), probabilities) >= STATED_AUC
    assert metrics.summary(np.array(labels), probabilities)["balanced_accuracy"] >= 0.85


def test_writes_checkpoint_card_and_metrics(trained):
    card = json.loads((trained.folder / "model.json").read_text())
    assert card["task"] == "classification" and [c["name"] for c in card["labels"]] == ["grey matter", "white matter"]
    assert {a["metric"] for a in card["accuracy"]} == {"roc_auc", "balanced_accuracy"}
    report = json.loads((trained.folder / "metrics.json").read_text())
    assert report["validation"]["roc_auc"] > 0.9 and len(report["validation"]["confusion_matrix"]) == 2
    assert (trained.folder / "confusion_matrix.csv").read_text().startswith("true\\predicted,grey matter")


def test_inference_equals_the_network_on_the_prepared_tensor(trained, held_out):
    images = held_out[0][:5]
    loaded = load_model(trained.folder / "model.pt")
    with torch.no_grad():
        direct = torch.softmax(loaded.networks["network"](torch.stack([prepare(i, loaded.card) for i in images])), 1)
    ours = np.array([r.probabilities for r in classify(images, loaded, device="cpu")])
    np.testing.assert_allclose(ours, direct.numpy(), atol=1e-6)


def test_saliency_is_on_the_input_grid(trained, held_out):
    image = held_out[0][0]
    image = Image(image.array, (0.5, 0.7, 1.1), (3.0, 4.0, 5.0), np.eye(3)[:, [1, 0, 2]])
    heat = saliency(image, str(trained.folder / "model.pt"), "white matter", device="cpu")
    assert heat.same_grid(image) and heat.array.min() >= 0.0 and heat.array.max() <= 1.0


def test_metrics_equal_scikit_learn():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, 200)
    probabilities = rng.dirichlet(np.ones(3), 200)
    ours = metrics.summary(truth, probabilities)
    assert ours["roc_auc"] == pytest.approx(sk.roc_auc_score(truth, probabilities, multi_class="ovr"))
    assert ours["balanced_accuracy"] == pytest.approx(sk.balanced_accuracy_score(truth, probabilities.argmax(1)))
    assert ours["confusion_matrix"] == sk.confusion_matrix(truth, probabilities.argmax(1)).tolist()
    binary = rng.dirichlet(np.ones(2), 200)
    assert metrics.roc_auc(truth % 2, binary) == pytest.approx(sk.roc_auc_score(truth % 2, binary[:, 1]))


def test_2d_classifier_on_rgb_patches(mni, tmp_path):
    images, labels = mni_tissue_patches(mni, (40, 90), 60, two_d=True)
    rgb = [Image(np.repeat(image.array[..., None], 3, axis=-1)) for image in images]  # grey as RGB
    result = train_classifier(rgb, labels, ["grey", "white"], tmp_path / "rgb", TrainingSettings(epochs=3))
    card = json.loads((result.folder / "model.json").read_text())
    assert card["input"]["spatial_dims"] == 2 and card["input"]["channels"] == 3
    assert len(classify(rgb[:3], str(result.folder / "model.pt"), device="cpu")) == 3
    heat = saliency(rgb[0], str(result.folder / "model.pt"), device="cpu")
    assert heat.shape == rgb[0].shape


def _picture() -> np.ndarray:
    picture = np.zeros((12, 20), np.uint8)
    picture[0, :5] = 255  # bright top-left edge, as the picture is shown
    return picture


@pytest.mark.parametrize("suffix", [".png", ".dcm"])
def test_2d_pictures_keep_row_zero_at_the_top(tmp_path, suffix):
    image = sitk.GetImageFromArray(_picture())
    if suffix == ".dcm":
        image.SetMetaData("0008|0060", "DX")
    sitk.WriteImage(image, str(tmp_path / f"picture{suffix}"))
    volume = read_image(tmp_path / f"picture{suffix}", allow_2d=True)
    assert volume.shape == (1, 12, 20)
    np.testing.assert_array_equal(volume.array[0], _picture())


def test_rgb_png_has_three_channels(tmp_path):
    rgb = np.zeros((8, 9, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / "colour.png"))
    volume = read_image(tmp_path / "colour.png", allow_2d=True)
    assert volume.shape == (1, 8, 9) and volume.channels == 3 and tuple(volume.array[0, 0, 0]) == (255, 0, 0)


def test_class_count_disagreeing_with_card(trained, tmp_path):
    card = json.loads((trained.folder / "model.json").read_text())
    card["labels"].append({"value": 2, "name": "csf"})
    (tmp_path / "model.json").write_text(json.dumps(card))
    (tmp_path / "model.pt").write_bytes((trained.folder / "model.pt").read_bytes())
    with pytest.raises(ModelError, match="do not match|3 classes"):
        classify([Image(np.zeros((16, 16, 16), np.float32))], str(tmp_path / "model.pt"), device="cpu")


def test_bad_inputs(trained):
    model = str(trained.folder / "model.pt")
    with pytest.raises(InputError, match="channel"):
        classify([Image(np.zeros((16, 16, 16, 2), np.float32))], model, device="cpu")
    with pytest.raises(ModelError, match="is a segmentation model, not a classification model"):
        classify([Image(np.zeros((16, 16, 16), np.float32))], "deepbet-brain-extraction", device="cpu")
    with pytest.raises(InputError, match="no training images"):
        train_classifier([], [], ["a", "b"], "unused")
    with pytest.raises(InputError, match="at least two classes"):
        train_classifier([Image(np.zeros((4, 4, 4)))] * 2, [0, 0], ["a", "b"], "unused")


def test_inputs_are_not_modified(trained, held_out):
    image = held_out[0][0]
    before = image.array.copy()
    classify([image], str(trained.folder / "model.pt"), device="cpu")
    saliency(image, str(trained.folder / "model.pt"), device="cpu")
    np.testing.assert_array_equal(image.array, before)


def test_command_line_train_and_classify(mni, tmp_path, capsys):
    images, labels = mni_tissue_patches(mni, (40, 90), 20)
    rows = []
    for index, (image, label) in enumerate(zip(images, labels)):
        write_image(image, tmp_path / f"p{index}.nii.gz")
        rows.append({"image": f"p{index}.nii.gz", "label": ["grey", "white"][label],
                     "split": "val" if index % 5 == 0 else "train"})
    with open(tmp_path / "data.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, ["image", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    assert main(["train-classifier", "--csv", str(tmp_path / "data.csv"), "--out", str(tmp_path / "model"),
                 "--epochs", "2", "--progress", "none"]) == 0
    assert main(["classify", str(tmp_path / "p0.nii.gz"), str(tmp_path / "p1.nii.gz"), "--model",
                 str(tmp_path / "model" / "model.pt"), "--csv", str(tmp_path / "out.csv"),
                 "--saliency", str(tmp_path / "maps"), "--progress", "none"]) == 0
    table = list(csv.DictReader((tmp_path / "out.csv").read_text().splitlines()))
    assert [r["input"] for r in table] == [str(tmp_path / "p0.nii.gz"), str(tmp_path / "p1.nii.gz")]
    assert {"predicted", "model", "p_grey", "p_white"} <= set(table[0])
    assert read_image(tmp_path / "maps" / "p0_saliency.nii.gz").same_grid(read_image(tmp_path / "p0.nii.gz"))
    (tmp_path / "bad.csv").write_text("path,class\nx,y\n")
    assert main(["train-classifier", "--csv", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "m2")]) == 3


@pytest.mark.parametrize("architecture", ["densenet", "resnet", "efficientnet"])
def test_every_offered_family_trains_classifies_and_explains(architecture, tmp_path):
    rng = np.random.default_rng(0)
    images = [Image(rng.normal(label * 2.0, 1.0, (32, 32, 32)).astype(np.float32)) for label in (0, 1) * 6]
    labels = [0, 1] * 6
    result = train_classifier(images, labels, ["low", "high"], tmp_path / architecture,
                              TrainingSettings(architecture=architecture, epochs=1, batch_size=4))
    model = str(result.folder / "model.pt")
    assert len(classify(images[:2], model, device="cpu")) == 2
    assert saliency(images[0], model, "high", device="cpu").same_grid(images[0])
