"""Trusted MONAI bundles run the way MONAI runs them: MedDL's result equals MONAI's own ConfigWorkflow run on the same
input (oblique, anisotropic), for bundles in the Model Zoo's shapes (zoo_bundle_shapes)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zoo_bundle_shapes as shapes
from meddl.classification.predict import classify
from meddl.errors import ModelError
from meddl.image import Image
from meddl.io import read_image, write_image
from meddl.models.bundle_workflow import bundle_on_path
from meddl.models.loading import load_model
from meddl.segmentation.predict import segment
from meddl_testing import oblique_direction

pytest.importorskip("ignite")


def ct_like(shape=(18, 22, 20), channels: int = 1) -> Image:
    """A CT-like oblique, anisotropic volume (k, j, i): a bright ellipsoid and a darker one on noise."""
    rng = np.random.default_rng(3)
    k, j, i = np.mgrid[: shape[0], : shape[1], : shape[2]]
    first = ((k - 8) / 6) ** 2 + ((j - 10) / 7) ** 2 + ((i - 9) / 5) ** 2 < 1
    second = ((k - 12) / 4) ** 2 + ((j - 14) / 4) ** 2 + ((i - 13) / 4) ** 2 < 1
    volumes = [(200 * first - 80 * second + rng.normal(0, 30, shape) + 40 * c).astype(np.float32)
               for c in range(channels)]
    array = volumes[0] if channels == 1 else np.stack(volumes, axis=-1)
    return Image(array, (1.3, 0.8, 2.1), (12.0, -30.0, 7.5), oblique_direction(0.35))


def monai_run(bundle: Path, inputs: list[Path], work: Path):
    """MONAI's own bundle run, as its documentation gives it: (the evaluator's last output, SaveImaged's files)."""
    from monai.bundle import ConfigWorkflow

    data = str(inputs[0]) if len(inputs) == 1 else [str(p) for p in inputs]
    config = bundle / "configs" / "inference.json"
    run_id = "evaluating" if '"evaluating"' in config.read_text() else "run"
    with bundle_on_path(bundle):
        workflow = ConfigWorkflow(config_file=str(config), meta_file=str(bundle / "configs" / "metadata.json"),
                                  logging_file=False, workflow_type="infer", run_id=run_id,
                                  bundle_root=str(bundle), output_dir=str(work / "out"), dataset_dir=str(work),
                                  **{"dataset#data": [{"image": data}], "dataloader#num_workers": 0,
                                     "evaluator#amp": False, "device": "$torch.device('cpu')"})
        workflow.initialize()
        workflow.run()
        output = workflow.evaluator.state.output
        workflow.finalize()
    return output, sorted((work / "out").rglob("*.nii.gz"))


def _write_channels(image: Image, folder: Path) -> list[Path]:
    folder.mkdir()
    arrays = [image.array[..., c] for c in range(image.array.shape[-1])] if image.array.ndim == 4 else [image.array]
    return [write_image(image.with_array(a), folder / f"channel{c}.nii.gz") for c, a in enumerate(arrays)]


def _same_as_monai(bundle: Path, image: Image, tmp_path: Path) -> Image:
    """MedDL's label map, checked voxel for voxel against the file MONAI's run writes, on the input's grid."""
    progress: list[tuple[float, str]] = []
    labels = segment(image, bundle, device="cpu", trust_model=True,
                     progress=lambda f, m: progress.append((f, m))).labels
    _, written = monai_run(bundle, _write_channels(image, tmp_path / "in"), tmp_path)
    assert len(written) == 1
    reference = read_image(written[0])
    assert labels.shape == image.shape[:3] and labels.array.dtype == np.uint8
    assert np.allclose(labels.direction, image.direction) and np.allclose(labels.origin, image.origin)
    assert np.allclose(reference.origin, image.origin, atol=1e-3) and reference.shape == labels.shape
    np.testing.assert_array_equal(labels.array, reference.array.astype(np.uint8))
    assert len(np.unique(labels.array)) >= 2  # a result that says something, not a blank map
    assert progress[-1][0] == 1.0 and any("batch 1 of 1" in message for _, message in progress)
    return labels


def test_segresnet_bundle_equals_monais_run(tmp_path):
    bundle = shapes.segresnet_bundle(tmp_path / "segresnet")
    _same_as_monai(bundle, ct_like(), tmp_path)
    loaded = load_model(bundle, trust=True)
    assert loaded.pipeline["type"] == "monai-bundle" and [label.name for label in loaded.card.labels] == [
        "liver", "spleen"]
    assert not (bundle / "eval").exists()  # outputs went to MedDL's private folder, not into the bundle


def test_swin_unetr_bundle_equals_monais_run(tmp_path):
    _same_as_monai(shapes.swin_unetr_bundle(tmp_path / "swin"), ct_like(), tmp_path)


def test_bundle_with_scripts_runs_its_own_code_and_leaves_nothing_behind(tmp_path):
    bundle = shapes.scripts_bundle(tmp_path / "scripted")
    path_before = list(sys.path)
    labels = _same_as_monai(bundle, ct_like(), tmp_path)
    assert sys.path == path_before and not [name for name in sys.modules if name.split(".")[0] == "scripts"]
    assert [label.name for label in load_model(bundle, trust=True).card.labels] == ["liver", "pancreas"]
    other = shapes.segresnet_bundle(tmp_path / "second")  # the next bundle does not see this one's scripts
    assert segment(ct_like(), other, device="cpu", trust_model=True).labels.shape == labels.shape


def test_two_channel_bundle_takes_its_channels_in_order(tmp_path):
    bundle = shapes.two_channel_bundle(tmp_path / "two")
    image = ct_like(channels=2)
    labels = segment(image, bundle, device="cpu", trust_model=True).labels
    output, _ = monai_run(bundle, _write_channels(image, tmp_path / "in"), tmp_path)
    pred = output[0]["pred"].numpy()  # (2, i, j, k) binary channels: painted larger region first
    expected = np.zeros(pred.shape[1:], np.uint8)
    for channel in np.argsort([-pred[c].sum() for c in range(2)], kind="stable"):
        expected[pred[channel] > 0] = channel + 1
    np.testing.assert_array_equal(labels.array, expected.transpose(2, 1, 0))
    card = load_model(bundle, trust=True).card
    assert card.channels == 2 and card.raw["input"]["channel_names"] == ["T1", "FLAIR"]
    assert [(label.value, label.name) for label in card.labels] == [(1, "whole"), (2, "core")]
    swapped = image.with_array(np.ascontiguousarray(image.array[..., ::-1]))
    assert not np.array_equal(segment(swapped, bundle, device="cpu", trust_model=True).labels.array, labels.array)


def test_2d_classifier_bundle_gives_monais_probabilities(tmp_path):
    bundle = shapes.classifier_2d_bundle(tmp_path / "classifier")
    rng = np.random.default_rng(5)
    image = Image(rng.normal(100, 30, (1, 40, 36)).astype(np.float32), (0.7, 0.7, 1.0), (3.0, 4.0, 0.0),
                  oblique_direction(0.2))
    result = classify([image], bundle, device="cpu", trust_model=True)[0]
    assert [label.name for label in result.card.labels] == ["A", "B", "C"]
    flat = image.with_array(image.array)
    files = _write_channels(flat, tmp_path / "in")
    import SimpleITK as sitk

    sitk.WriteImage(sitk.ReadImage(str(files[0]))[:, :, 0], str(files[0]))  # the 2D file a 2D bundle reads
    output, _ = monai_run(bundle, files, tmp_path)
    expected = output[0]["pred"].float().numpy()
    np.testing.assert_allclose(result.probabilities, expected, atol=1e-6)
    assert sum(result.probabilities) == pytest.approx(1.0, abs=1e-5)


def test_untrusted_bundle_is_refused_with_what_trust_means(tmp_path):
    bundle = shapes.segresnet_bundle(tmp_path / "segresnet")
    with pytest.raises(ModelError, match=r"executable expressions.*'\$' expression.*scripts/ folder.*your user's"):
        segment(ct_like(), bundle, device="cpu")


def test_a_failing_bundle_is_one_clear_error(tmp_path):
    bundle = shapes.segresnet_bundle(tmp_path / "segresnet")
    torch.save({"wrong": torch.zeros(1)}, bundle / "models" / "model.pt")
    with pytest.raises(ModelError, match="failed"):
        segment(ct_like(), bundle, device="cpu", trust_model=True)
    assert not [name for name in sys.modules if name.split(".")[0] == "scripts"]


def test_a_trusted_zoo_bundle_installs_and_runs_from_the_command_line(tmp_path, monkeypatch, capsys):
    """One install (NGC-style zip, checksum, the workflow's dry run), then `meddl segment --model ID`."""
    import hashlib
    import json
    import zipfile

    from loopback_files import FileServer
    from meddl.cli import main
    from meddl.library import install
    from meddl.models import catalog

    bundle = shapes.segresnet_bundle(tmp_path / "Zoo_Seg")
    archive = tmp_path / "Zoo_Seg_v0.1.0.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted(bundle.rglob("*")):
            zipped.write(path, path.relative_to(tmp_path))
    payload = archive.read_bytes()
    server = FileServer({"/Zoo_Seg_v0.1.0.zip": payload})
    monkeypatch.setenv("MEDDL_MODEL_ZOO_URL", server.base + "/{name}_v{version}.zip")
    monkeypatch.setitem(catalog._entries(), "zoo-seg", {
        "id": "zoo-seg", "title": "Zoo-shaped", "task": "segmentation", "license": "Apache-2.0",
        "source": {"monai_zoo": {"name": "Zoo_Seg", "version": "0.1.0"},
                   "checksum": {"algorithm": "sha1", "value": hashlib.sha1(payload).hexdigest()}}})
    with pytest.raises(ModelError, match="executable expressions"):
        install.install("zoo-seg")
    assert install.install("zoo-seg", trust=True).trusted
    image = write_image(ct_like(), tmp_path / "ct.nii.gz")
    assert main(["segment", str(image), str(tmp_path / "labels.nii.gz"), "--model", "zoo-seg", "--device", "cpu",
                 "--progress", "none"]) == 0
    expected = segment(read_image(image), bundle, device="cpu", trust_model=True).labels
    np.testing.assert_array_equal(read_image(tmp_path / "labels.nii.gz").array, expected.array)
    names = [label["name"] for label in json.loads((tmp_path / "labels.labels.json").read_text())["labels"]]
    assert names == ["liver", "spleen"]
