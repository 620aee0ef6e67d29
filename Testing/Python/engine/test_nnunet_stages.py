"""nnU-Net beyond one folder (issue 15): the 3d_lowres -> 3d_cascade_fullres cascade, the postprocessing
nnU-Net determined for a folder, and catalog entries adding terminology to dataset.json's labels.

The cascade is planned by nnU-Net's own planner (Testing/Python/nnunet_folders.py, kind "cascade") and compared
with nnUNetPredictor run as `nnUNetv2_predict` runs a cascade; the postprocessing is applied by nnU-Net's own
`load_postprocess_save` to the reference."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from meddl.errors import ModelError
from meddl.io import read_image
from meddl.models.loading import load_model
from meddl.models.nnunet import load_nnunet
from meddl.segmentation.predict import segment

pytest.importorskip("nnunetv2")
import nnunet_folders  # noqa: E402  (needs nnunetv2)

BRAIN = {"category": {"scheme": "SCT", "code": "123037004", "meaning": "Anatomical Structure"},
         "type": {"scheme": "SCT", "code": "39937001", "meaning": "Grey matter"}}


def _case(results: Path) -> list[Path]:
    return nnunet_folders.raw_cases(results)[nnunet_folders.training_case(results)]


def _dice(a: np.ndarray, b: np.ndarray, value: int) -> float:
    x, y = a == value, b == value
    return 1.0 if not x.any() and not y.any() else 2.0 * (x & y).sum() / (x.sum() + y.sum())


@pytest.fixture(scope="module")
def cascade() -> Path:
    return nnunet_folders.make_results_folder(None, "cascade")


def test_a_cascade_equals_nnunet_predicting_both_stages(cascade):
    """Mirroring off: each stage runs the code the "3d" folder's tests check with mirroring on and off (on, this
    cascade's small patches make it 50 s)."""
    files = _case(cascade)
    reference, _ = nnunet_folders.reference_labels(cascade, files, folds=("all",), mirroring=False)
    model = load_model(cascade)
    assert model.card.raw["nnunet"]["previous_stage"] == "3d_lowres"
    assert set(model.networks) == {"network", "previous stage"}
    ours = segment(read_image(files[0]), model, "cpu", fast=True).labels.array
    assert set(np.unique(ours)) == set(np.unique(reference)) and {1, 2} <= set(np.unique(ours))
    assert min(_dice(ours, reference, value) for value in (1, 2)) >= 0.99


def test_the_first_stage_alone_differs_from_the_cascade(cascade):
    """The second stage is not a pass-through: it reads the first stage's labels and changes them."""
    image = read_image(_case(cascade)[0])
    first = segment(image, load_nnunet(cascade.parent, configuration="3d_lowres"), "cpu", fast=True).labels.array
    both = segment(image, load_model(cascade), "cpu", fast=True).labels.array
    assert (first != both).any()


def test_a_cascade_without_its_first_stage_is_refused(cascade, tmp_path):
    alone = tmp_path / cascade.parent.name / cascade.name
    shutil.copytree(cascade, alone)
    with pytest.raises(ModelError, match="first stage nnUNetTrainer__nnUNetPlans__3d_lowres must be beside it"):
        load_model(alone)


# ---------------------------------------------------------------------------------------------------------------
# postprocessing


@pytest.fixture
def postprocessed(tmp_path) -> tuple[Path, tuple, list[Path]]:
    """A copy of the "3d" folder with nnU-Net's postprocessing.pkl: keep the largest grey matter component,
    then the largest component of grey and white matter together (both kinds of step nnU-Net decides)."""
    from nnunetv2.postprocessing.remove_connected_components import (
        remove_all_but_largest_component_from_segmentation as keep_largest,
    )

    folder = nnunet_folders.make_results_folder(None, "3d")
    target = tmp_path / folder.parent.name / folder.name
    shutil.copytree(folder, target, ignore=shutil.ignore_patterns("checkpoint_best.pth", "validation"))
    steps = ([keep_largest, keep_largest], [{"labels_or_regions": 1}, {"labels_or_regions": [1, 2]}])
    (target / "crossval_results_folds_0").mkdir()
    with open(target / "crossval_results_folds_0" / "postprocessing.pkl", "wb") as stream:
        pickle.dump(steps, stream)
    return target, steps, _case(folder)


def test_postprocessing_is_applied_as_nnunet_applies_it(postprocessed, tmp_path):
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.postprocessing.remove_connected_components import load_postprocess_save

    folder, (functions, arguments), files = postprocessed
    raw, raw_path = nnunet_folders.reference_labels(folder, files, mirroring=False)
    load_postprocess_save(str(raw_path), str(tmp_path / "pp.nii.gz"), SimpleITKIO(), functions, arguments)
    reference = read_image(tmp_path / "pp.nii.gz").array
    model = load_model(folder)
    assert "remove_all_but_largest_component_from_segmentation" in model.card.provenance
    ours = segment(read_image(files[0]), model, "cpu", fast=True).labels.array
    assert (reference != raw).any(), "the postprocessing changes nothing: the test proves nothing"
    assert np.array_equal(ours, reference)


class _RunsCode:
    def __reduce__(self):
        return (os.getpid, ())


def test_a_postprocessing_file_with_other_code_is_refused_without_trust(postprocessed):
    folder, (functions, arguments), _ = postprocessed
    with open(folder / "crossval_results_folds_0" / "postprocessing.pkl", "wb") as stream:
        pickle.dump((functions, [{"labels_or_regions": _RunsCode()}, arguments[1]]), stream)
    with pytest.raises(ModelError, match="holds more than nnU-Net's postprocessing.*--trust-model"):
        load_model(folder)
    assert load_model(folder, trust=True).pipeline["parts"].postprocessing is not None


def test_a_damaged_postprocessing_file_is_a_model_error(postprocessed):
    folder, _, _ = postprocessed
    (folder / "crossval_results_folds_0" / "postprocessing.pkl").write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(ModelError, match="postprocessing"):
        load_model(folder)


# ---------------------------------------------------------------------------------------------------------------
# catalog overrides


def test_a_catalog_entry_adds_terminology_to_the_labels_dataset_json_names():
    folder = nnunet_folders.make_results_folder(None, "3d")
    card = load_nnunet(folder, overrides={"labels": [{"value": 1, "terminology": BRAIN}],
                                          "input": {"orientation": "RAS"}}).card
    grey, white = card.labels
    assert (grey.name, grey.terminology) == ("grey matter", BRAIN) and white.terminology is None
    assert card.orientation == "RAS" and card.channels == 1
    with pytest.raises(ModelError, match=r"labels \[7\] that the model does not have"):
        load_nnunet(folder, overrides={"labels": [{"value": 7, "name": "nothing"}]})
