"""MONAI registration bundles: MedDL runs a Zoo-shaped registration bundle through MONAI's own ConfigWorkflow and turns
its dense displacement field (monai.networks.blocks.Warp's convention) into MedDL's displacement field; MedDL's warp
of the moving image with it equals the bundle's own Warp output, on an oblique, anisotropic pair."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zoo_bundle_shapes as shapes
from meddl.errors import ModelError
from meddl.image import Image
from meddl.io import read_image, write_image
from meddl.models.bundle_workflow import bundle_on_path
from meddl.models.loading import load_model
from meddl.registration.bundle_run import bundle_displacement, ddf_to_lps, dry_run
from meddl.registration.field_files import read_displacement_field
from meddl.registration.fields import warp
from meddl_testing import oblique_direction

pytest.importorskip("ignite")

SHAPE = (16, 20, 24)  # (k, j, i): LocalNet with three levels needs multiples of 4


def pair() -> tuple[Image, Image]:
    """An oblique, anisotropic fixed image (two blobs on noise) and a moving one on its grid (blobs shifted)."""
    rng = np.random.default_rng(11)
    k, j, i = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]].astype(np.float64)

    def blobs(shift: float) -> np.ndarray:
        first = np.exp(-(((k - 8) / 4) ** 2 + ((j - 9 - shift) / 5) ** 2 + ((i - 11 + shift) / 6) ** 2))
        second = np.exp(-(((k - 10) / 3) ** 2 + ((j - 13) / 3) ** 2 + ((i - 16 - shift) / 3) ** 2))
        return 300 * first + 150 * second + rng.normal(0, 10, SHAPE)

    fixed = Image(blobs(0.0).astype(np.float32), (0.9, 1.4, 2.2), (-20.0, 14.0, 33.0), oblique_direction(0.4))
    return fixed, fixed.with_array(blobs(1.5).astype(np.float32))


def monai_run(bundle: Path, fixed: Path, moving: Path, work: Path) -> dict:
    """MONAI's own run of the bundle on one pair: the evaluator's postprocessed output (pred: DDF, warped)."""
    from monai.bundle import ConfigWorkflow

    with bundle_on_path(bundle):
        workflow = ConfigWorkflow(config_file=str(bundle / "configs" / "inference.json"),
                                  meta_file=str(bundle / "configs" / "metadata.json"), logging_file=False,
                                  workflow_type="infer", run_id="run", bundle_root=str(bundle),
                                  output_dir=str(work / "out"), dataset_dir=str(work),
                                  **{"dataset#data": [{"fixed_image": str(fixed), "moving_image": str(moving)}],
                                     "dataloader#num_workers": 0, "evaluator#amp": False,
                                     "device": "$torch.device('cpu')"})
        workflow.initialize()
        workflow.run()
        output = workflow.evaluator.state.output[0]
        workflow.finalize()
    return {key: np.asarray(output[key].detach().numpy(), np.float64) for key in ("pred", "warped")}


def _unit(image: Image) -> Image:
    """ScaleIntensityd(minv=0, maxv=1), as the bundle scales what it warps."""
    array = image.array.astype(np.float32)
    return image.with_array((array - array.min()) / (array.max() - array.min()))


def test_bundle_ddf_becomes_meddls_field_and_warps_as_monais_warp(tmp_path):
    bundle = shapes.registration_bundle(tmp_path / "reg")
    fixed, moving = pair()
    model = load_model(bundle, trust=True)
    assert model.card.task == "registration" and model.pipeline["registration_keys"] == {
        "fixed": "fixed_image", "moving": "moving_image", "ddf": "pred"}
    displacement = bundle_displacement(fixed, moving, model, "cpu")
    files = [write_image(image, tmp_path / f"case_{name}.nii.gz") for image, name in ((fixed, "fixed"),
                                                                                       (moving, "moving"))]
    output = monai_run(bundle, *files, tmp_path)
    ddf, warped = output["pred"], output["warped"][0]  # (3, i, j, k) voxels; (i, j, k)
    assert ddf.shape == (3, *SHAPE[::-1]) and np.abs(ddf).max() > 0.5  # a deformation of some voxels
    np.testing.assert_allclose(displacement, ddf_to_lps(ddf, fixed), atol=1e-5)
    ours = warp(_unit(moving), fixed, displacement).array  # (k, j, i), MedDL's physical-space warp
    target = np.stack(np.meshgrid(*(np.arange(n) for n in SHAPE[::-1]), indexing="ij")) + ddf
    inside = np.all((target >= 0) & (target <= np.array(SHAPE[::-1])[:, None, None, None] - 1), axis=0)
    inside = inside.transpose(2, 1, 0)  # where MONAI's border padding and MedDL's zeros agree
    assert inside.mean() > 0.5
    np.testing.assert_allclose(ours[inside], warped.transpose(2, 1, 0)[inside], atol=1e-5)
    assert not np.allclose(ours[inside], _unit(moving).array[inside], atol=1e-2)  # the warp moved something


def test_register_command_writes_the_bundles_field_and_warped_image(tmp_path):
    from meddl.cli import main

    bundle = shapes.registration_bundle(tmp_path / "reg")
    fixed, moving = pair()
    paths = [write_image(image, tmp_path / f"{name}.nii.gz") for image, name in ((fixed, "f"), (moving, "m"))]
    out = {name: tmp_path / f"{name}.nii.gz" for name in ("field", "warped")}
    argv = ["register", *map(str, paths), "--model", str(bundle), "--trust-model", "--device", "cpu",
            "--out-transform", str(out["field"]), "--out-warped", str(out["warped"]),
            "--out-report", str(tmp_path / "report.json"), "--progress", "none"]
    assert main(argv) == 0
    field, grid = read_displacement_field(out["field"])
    fixed, moving = read_image(paths[0]), read_image(paths[1])
    assert grid.same_grid(fixed)
    np.testing.assert_allclose(field, bundle_displacement(fixed, moving, load_model(bundle, trust=True), "cpu"),
                               atol=1e-5)
    np.testing.assert_allclose(read_image(out["warped"]).array, warp(moving, fixed, field).array, atol=1e-3)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["model"] == "registration_test" and 0 <= report["folded_share"] <= 1
    untrusted = ["register", *map(str, paths), "--model", str(bundle), "--device", "cpu", "--out-transform",
                 str(tmp_path / "untrusted.nii.gz"), "--progress", "none"]
    assert main(untrusted) != 0 and not (tmp_path / "untrusted.nii.gz").exists()


def test_a_bundle_whose_output_is_not_a_ddf_of_the_fixed_shape_is_refused(tmp_path):
    fixed, moving = pair()
    model = load_model(shapes.registration_bundle(tmp_path / "warped_only", ddf_output=False), trust=True)
    with pytest.raises(ModelError, match=r"shape \(1, 24, 20, 16\), not a dense displacement field of the fixed "
                                         r"image's shape \(3, 24, 20, 16\)"):
        bundle_displacement(fixed, moving, model, "cpu")


def test_registration_bundles_need_trust_and_their_task(tmp_path):
    from meddl.segmentation.predict import segment

    bundle = shapes.registration_bundle(tmp_path / "reg")
    with pytest.raises(ModelError, match="executable expressions"):
        load_model(bundle)
    with pytest.raises(ModelError, match="is a registration model, not a segmentation model"):
        segment(pair()[0], bundle, device="cpu", trust_model=True)
    dry_run(load_model(bundle, trust=True))  # the library's check before it lists an imported bundle


def test_a_registration_bundle_imports_into_the_library_and_runs_by_id(tmp_path):
    from meddl.cli import main

    bundle = shapes.registration_bundle(tmp_path / "reg")
    assert main(["models", "import", str(bundle), "--id", "reg-bundle"]) != 0  # untrusted: refused
    assert main(["models", "import", str(bundle), "--id", "reg-bundle", "--trust-model"]) == 0  # after a dry run
    fixed, moving = pair()
    by_id = bundle_displacement(fixed, moving, load_model("reg-bundle", trust=True), "cpu")
    np.testing.assert_allclose(by_id, bundle_displacement(fixed, moving, load_model(bundle, trust=True), "cpu"))


def test_a_moving_image_on_another_grid_is_resampled_onto_the_fixed_grid_first(tmp_path):
    model = load_model(shapes.registration_bundle(tmp_path / "reg"), trust=True)
    fixed, moving = pair()
    other = Image(moving.array[::2, ::2, ::2].copy(), (1.8, 2.8, 4.4), moving.origin, moving.direction)
    displacement = bundle_displacement(fixed, other, model, "cpu")
    resampled = warp(other, fixed, np.zeros((*SHAPE, 3)))
    np.testing.assert_allclose(displacement, bundle_displacement(fixed, resampled, model, "cpu"), atol=1e-6)


def test_refine_starts_instance_optimisation_from_the_bundles_field(tmp_path):
    from meddl.registration.bundle_run import bundle_register
    from meddl.registration.optimise import RegistrationSettings

    model = load_model(shapes.registration_bundle(tmp_path / "reg"), trust=True)
    fixed, moving = pair()
    settings = RegistrationSettings(levels=(1,), deformable_iterations=(3,), device="cpu", tolerance=0)
    plain = bundle_register(fixed, moving, model, settings=settings)
    assert plain.displacement.shape == (*SHAPE, 3) and np.array_equal(plain.affine, np.eye(4))
    refined = bundle_register(fixed, moving, model, refine=True, settings=settings)
    assert refined.displacement.shape == (*SHAPE, 3) and not np.allclose(refined.displacement, plain.displacement)
