"""nnU-Net v2 results folders run in MedDL as nnU-Net's own predictor runs them (issue 15).

The folders are genuine: planned, preprocessed and trained (briefly, on CPU) by nnunetv2 itself on the MNI
T1 with grey/white matter labels (Testing/Python/nnunet_folders.py, cached between sessions)."""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from meddl.cli import main
from meddl.errors import ModelError
from meddl.image import Image
from meddl.io import read_image, write_image
from meddl.models.loading import load_model
from meddl.segmentation.predict import segment
from meddl_testing import oblique_direction

pytest.importorskip("nnunetv2")
import nnunet_folders  # noqa: E402  (needs nnunetv2)


def _dice(a: np.ndarray, b: np.ndarray, value: int) -> float:
    x, y = a == value, b == value
    return 1.0 if not x.any() and not y.any() else 2.0 * (x & y).sum() / (x.sum() + y.sum())


def _agrees(ours: np.ndarray, reference: np.ndarray, labels=(1, 2)) -> None:
    assert ours.shape == reference.shape
    assert set(np.unique(ours)) == set(np.unique(reference))
    for value in labels:
        assert _dice(ours, reference, value) >= 0.99, value


@pytest.fixture(scope="module")
def folder() -> Path:
    return nnunet_folders.make_results_folder(None, "3d")


def _case(results: Path) -> list[Path]:
    return nnunet_folders.raw_cases(results)[nnunet_folders.training_case(results)]


@pytest.mark.parametrize("mirroring", [False, True])
def test_labels_equal_nnunet_predictor(folder, mirroring):
    files = _case(folder)
    reference, _ = nnunet_folders.reference_labels(folder, files, mirroring=mirroring)
    ours = segment(read_image(files[0]), folder, "cpu", fast=not mirroring).labels
    assert {1, 2} <= set(np.unique(reference))
    _agrees(ours.array, reference)
    assert ours.same_grid(read_image(files[0]))


@pytest.mark.parametrize("kind", ["2d", "3d-2folds", "two-channel", "regions"])
def test_every_kind_of_folder_agrees(kind, tmp_path):
    results = nnunet_folders.make_results_folder(None, kind)
    files = _case(results)
    folds = nnunet_folders.KINDS[kind][2]
    reference, _ = nnunet_folders.reference_labels(results, files, folds=folds, mirroring=False)
    out = tmp_path / "labels.nii.gz"
    more = ["--more-inputs", *map(str, files[1:])] if len(files) > 1 else []
    assert main(["segment", str(files[0]), str(out), "--model", str(results), "--fast", "--device", "cpu",
                 *more, "--progress", "none"]) == 0
    labels = json.loads(out.with_name("labels.labels.json").read_text())["labels"]
    dataset = json.loads((results / "dataset.json").read_text())
    assert {label["name"] for label in labels} == {name for name in dataset["labels"] if name != "background"}
    _agrees(read_image(out).array, reference, [label["value"] for label in labels])


def test_an_oblique_anisotropic_input_is_segmented_on_its_own_grid(folder, tmp_path):
    """nnU-Net reads the voxels in file order with the file's spacing: an oblique, anisotropic copy of a case
    gives the same voxels' labels, on exactly the copy's grid."""
    original = read_image(_case(folder)[0])
    copy = Image(original.array, (original.spacing[0], original.spacing[1], original.spacing[2] * 1.5),
                 (10.0, -20.0, 5.0), oblique_direction(0.4))
    path = write_image(copy, tmp_path / "oblique_0000.nii.gz")
    reference, _ = nnunet_folders.reference_labels(folder, [path], mirroring=False)
    ours = segment(copy, folder, "cpu", fast=True).labels
    _agrees(ours.array, reference)
    assert ours.same_grid(copy)


def test_the_parent_folder_and_the_export_zip_work(folder, tmp_path):
    assert load_model(folder.parent).card.name == folder.parent.name
    archive = nnunet_folders.export_zip(folder.parent, tmp_path / "model.zip")
    assert main(["models", "import", str(archive), "--id", "mni-tissue"]) == 0
    files = _case(folder)
    ours = segment(read_image(files[0]), "mni-tissue", "cpu", fast=True).labels.array
    reference, _ = nnunet_folders.reference_labels(folder, files, mirroring=False)
    _agrees(ours, reference)
    assert main(["models", "import", str(folder.parent)]) == 0  # named after the dataset
    assert load_model(folder.parent.name).card.labels[0].name == "grey matter"


def test_card_from_dataset_json(folder):
    card = load_model(folder).card
    assert card.channels == 1 and [(label.value, label.name) for label in card.labels] == [
        (1, "grey matter"), (2, "white matter")]
    assert card.raw["nnunet"]["configuration"] == "3d_fullres" and card.raw["nnunet"]["folds"] == ["0"]


class _RunsCode:
    def __reduce__(self):
        return (print, ("this ran while unpickling",))


def _copy_with_checkpoint(folder: Path, tmp_path: Path, extra) -> Path:
    import shutil

    target = tmp_path / folder.parent.name / folder.name
    shutil.copytree(folder, target)
    checkpoint = target / "fold_0" / "checkpoint_final.pth"
    data = torch.load(checkpoint, map_location="cpu", weights_only=False)
    data.update(extra)
    torch.save(data, checkpoint, pickle_module=pickle)
    return target


def test_a_checkpoint_that_would_run_code_is_refused_without_trust(folder, tmp_path, capsys):
    target = _copy_with_checkpoint(folder, tmp_path, {"surprise": _RunsCode()})
    with pytest.raises(ModelError, match="could run code"):
        load_model(target)
    assert "this ran" not in capsys.readouterr().out


def test_a_trainer_nnunet_does_not_ship_is_refused(folder, tmp_path):
    target = _copy_with_checkpoint(folder, tmp_path, {"trainer_name": "MyOwnTrainer"})
    with pytest.raises(ModelError, match="does not ship"):
        load_model(target)


def test_folds_are_chosen_and_checked():
    results = nnunet_folders.make_results_folder(None, "3d-2folds")
    assert load_model(results, folds=("1",)).card.raw["nnunet"]["folds"] == ["1"]
    with pytest.raises(ModelError, match="no checkpoint for fold"):
        load_model(results, folds=("4",))
    assert len(load_model(results).pipeline["parts"].parameters) == 2


def test_a_zip_with_neither_format_is_refused(tmp_path, capsys):
    archive = tmp_path / "empty.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("readme.txt", "nothing")
    assert main(["models", "import", str(archive), "--id", "nothing"]) == 4
    assert "neither a MONAI bundle" in capsys.readouterr().err
