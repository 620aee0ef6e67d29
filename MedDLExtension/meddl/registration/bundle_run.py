"""MONAI registration bundles run by their own workflow (models.bundle_workflow), their dense displacement field
(DDF) mapped onto MedDL's registration result.

MONAI's convention (monai.networks.blocks.Warp, as GlobalNet, LocalNet and VoxelMorph use it): the DDF is a
(3, i, j, k) array on the grid of the arrays the network saw, channel c the displacement along array axis c in
voxels, and the warped moving image at voxel p is the moving array sampled at p + ddf(p) (linear, voxel centres,
align_corners=True). MedDL hands the bundle its fixed image and the moving image resampled onto the fixed grid, both
as NIfTI files; MONAI's LoadImage reads a NIfTI file's array in its voxel order (i, j, k), which is MedDL's index
order, so p is a voxel index of the fixed image and p + ddf(p) a continuous index on the same grid. With the fixed
image's index-to-LPS matrix M the transform is T(x) = M (p + ddf(p)) for x = M p, so the displacement in MedDL's
convention (registration.fields: T(x) = x + D(x), LPS mm on the fixed grid) is D = M[:3, :3] ddf.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ..device import select_compute
from ..errors import ModelError
from ..image import Image
from ..models.bundle_workflow import WorkflowOutput, run_workflow
from ..models.loaded import LoadedModel
from ..progress import Progress, no_progress, scaled
from ..tasks import require_task
from .fields import folded_share, warp
from .optimise import AffineTransform, Registration, RegistrationResult, RegistrationSettings, check_pair

GRID_TOLERANCE = 1e-3  # mm: NIfTI stores the affine in single precision


def checked_ddf(output: WorkflowOutput, name: str) -> np.ndarray:
    """The bundle's (3, i, j, k) voxel DDF, refused unless it is a 3-vector field on the fixed image's grid."""
    ddf, shape = output.pred, output.input_shape
    if ddf.ndim != 4 or ddf.shape[0] != 3 or tuple(ddf.shape[1:]) != tuple(shape):
        raise ModelError(f"bundle {name!r} returned an output of shape {tuple(ddf.shape)}, not a dense displacement "
                         f"field of the fixed image's shape (3, {', '.join(str(n) for n in shape)}): MedDL maps a "
                         "registration bundle's DDF (monai.networks.blocks.Warp's convention) on the fixed grid")
    if output.affine is not None:
        found, expected = output.affine[:3], output.input_affine[:3]
        if not np.allclose(found, expected, atol=GRID_TOLERANCE):
            raise ModelError(f"bundle {name!r} returned a displacement field on another grid than the fixed image's "
                             "(its postprocessing must give the DDF on the grid of the images it read)")
    if not np.all(np.isfinite(ddf)):
        raise ModelError(f"bundle {name!r} returned a displacement field with NaN or infinite values")
    return ddf.astype(np.float64)


def ddf_to_lps(ddf: np.ndarray, fixed: Image) -> np.ndarray:
    """MONAI's (3, i, j, k) voxel DDF on the fixed grid -> MedDL's (k, j, i, 3) LPS mm displacement."""
    linear = fixed.index_to_lps()[:3, :3]
    return np.ascontiguousarray(np.einsum("ab,bijk->kjia", linear, ddf))


def moving_on_fixed_grid(fixed: Image, moving: Image) -> Image:
    """The moving image as the bundle must see it: on the fixed grid (resampled in physical space when its grid
    differs; a registration network's Warp takes both arrays on one grid)."""
    if moving.same_grid(fixed):
        return moving
    return warp(moving, fixed, np.zeros((*fixed.shape[:3], 3)))


def bundle_displacement(fixed: Image, moving: Image, model: LoadedModel, device: str = "auto",
                        progress: Optional[Progress] = None) -> np.ndarray:
    """The (k, j, i, 3) LPS mm displacement (fixed -> moving) a registration bundle's own workflow gives."""
    require_task(model.card, "registration")
    keys = model.pipeline.get("registration_keys")
    if model.pipeline.get("type") != "monai-bundle" or not keys:
        raise ModelError(f"model {model.card.name!r} is not a MONAI registration bundle run by its workflow")
    check_pair(fixed, moving)
    report = progress or no_progress
    inputs = {keys["fixed"]: fixed, keys["moving"]: moving_on_fixed_grid(fixed, moving)}
    output = run_workflow(model, inputs, select_compute(device), report, keys["ddf"])
    return ddf_to_lps(checked_ddf(output, model.card.name), fixed)


def bundle_register(fixed: Image, moving: Image, model: LoadedModel, refine: bool = False,
                    settings: Optional[RegistrationSettings] = None,
                    progress: Optional[Progress] = None) -> RegistrationResult:
    """A registration bundle's deformation (no affine stage: the bundle's own workflow decides what it aligns),
    optionally refined by MedDL's instance optimisation."""
    settings, report = settings or RegistrationSettings(), progress or no_progress
    share = 0.6 if refine else 1.0
    displacement = bundle_displacement(fixed, moving, model, settings.device, scaled(report, 0.0, share))
    if refine:
        registration = Registration(fixed, moving, settings, scaled(report, 0.6, 1.0))
        identity = AffineTransform(torch.zeros(3), torch.zeros(3)).to(registration.device).requires_grad_(False)
        initial = torch.from_numpy(displacement.transpose(3, 0, 1, 2).copy()).float().to(registration.device)
        with torch.enable_grad():
            return registration.run(identity, initial)
    report(1.0, "registered")
    return RegistrationResult(displacement, np.eye(4), {"folded_share": folded_share(displacement, fixed),
                                                        "model": model.card.name})


def dry_run(loaded: LoadedModel) -> None:
    """Run a registration bundle once on the CPU: a small blob against a shifted copy (the library's check)."""
    k, j, i = np.meshgrid(*(np.arange(16.0),) * 3, indexing="ij")
    fixed = Image(np.exp(-((k - 8) ** 2 + (j - 8) ** 2 + (i - 8) ** 2) / 20.0).astype(np.float32))
    moving = fixed.with_array(np.roll(fixed.array, 1, axis=2))
    bundle_displacement(fixed, moving, loaded, "cpu")
