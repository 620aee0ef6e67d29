"""The nnU-Net fixture makes genuine results folders, and nnU-Net's own predictor runs on them."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import SimpleITK as sitk
from nnunet_folders import KINDS, export_zip, raw_cases, raw_label, reference_labels, training_case


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_results_folder_is_genuine_and_predicts_both_tissues(nnunet_results, kind, tmp_path):
    folder = nnunet_results(kind)
    _, configuration, folds, channels, regions = KINDS[kind]
    assert folder.name == f"nnUNetTrainer__nnUNetPlans__{configuration}"
    plans = json.loads((folder / "plans.json").read_text())
    dataset = json.loads((folder / "dataset.json").read_text())
    assert configuration in plans["configurations"]
    assert len(dataset["channel_names"]) == channels
    assert ("regions_class_order" in dataset) == regions
    for fold in folds:
        assert (folder / f"fold_{fold}" / "checkpoint_final.pth").is_file()
    assert sorted(path.name for path in folder.glob("fold_*")) == [f"fold_{fold}" for fold in folds]
    if configuration == "3d_cascade_fullres":  # planned by nnU-Net itself, its first stage beside it
        assert plans["configurations"][configuration]["previous_stage"] == "3d_lowres"
        assert (folder.parent / "nnUNetTrainer__nnUNetPlans__3d_lowres" / "fold_all" / "checkpoint_final.pth").is_file()

    case = training_case(folder)
    inputs = raw_cases(folder)[case]
    assert len(inputs) == channels
    labels, path = reference_labels(folder, inputs, folds, mirroring=False, output_folder=tmp_path)
    assert path.is_file() and path.parent == tmp_path
    assert set(np.unique(labels).tolist()) <= {0, 1, 2}
    assert {1, 2} <= set(np.unique(labels).tolist())
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(raw_label(folder, case))))
    assert labels.shape == truth.shape


def test_export_zip_matches_nnunet_layout(nnunet_results, tmp_path):
    folder = nnunet_results("3d")
    archive = export_zip(folder.parent, tmp_path / "model.zip")
    names = set(zipfile.ZipFile(archive).namelist())
    prefix = f"{folder.parent.name}/{folder.name}/"
    assert {prefix + name for name in ("plans.json", "dataset.json", "dataset_fingerprint.json",
                                        "fold_0/checkpoint_final.pth", "fold_0/progress.png",
                                        "fold_0/validation/summary.json")} <= names
