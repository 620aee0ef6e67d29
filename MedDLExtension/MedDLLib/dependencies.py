"""First-use installation of MedDL's Python dependencies inside Slicer, after asking the user.

torch comes through the PyTorch extension (which picks the CUDA build matching the driver);
MONAI is installed pinned and without its dependencies, and then only those of its
requirements that are missing, so Slicer's own numpy, SimpleITK and VTK are never replaced.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

TORCH_REQUIREMENT = ">=2.1"
PINNED_PACKAGES = {"monai": "monai==1.6.1"}
# Requirements of the pinned packages, installed only when missing (never upgraded).
SECONDARY_PACKAGES = {"numpy": "numpy", "scipy": "scipy", "jsonschema": "jsonschema>=4.18"}
# nnU-Net v2 models only, on their first use: nnunetv2 and its network library pinned and without their
# dependencies (which would pull torchvision, timm and a matching torch), then only the packages its
# preprocessing and inference import, when missing.
NNUNET_PINNED = {"nnunetv2": "nnunetv2==2.8.1", "dynamic_network_architectures": "dynamic_network_architectures==0.4.4"}
NNUNET_SECONDARY = {"acvl_utils": "acvl_utils==0.2.6", "batchgenerators": "batchgenerators==0.25.5",
                    "skimage": "scikit-image", "pandas": "pandas", "blosc2": "blosc2", "nibabel": "nibabel"}
# Packages Slicer ships and MedDL must never reinstall.
SLICER_OWNED = ("numpy", "SimpleITK", "vtk")


@dataclass(frozen=True)
class InstallStep:
    """One installation action: 'torch' through PyTorchUtils, or a pip requirement."""

    kind: str
    requirement: str
    no_deps: bool = False


def is_installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def install_plan(installed: Callable[[str], bool] = is_installed, nnunet: bool = False) -> list[InstallStep]:
    """What is missing, in installation order; empty when everything is there. `nnunet`: also what nnU-Net v2
    models need."""
    steps = []
    if not installed("torch"):
        steps.append(InstallStep("torch", TORCH_REQUIREMENT))
    pinned, secondary = dict(PINNED_PACKAGES), dict(SECONDARY_PACKAGES)
    if nnunet:
        pinned.update(NNUNET_PINNED)
        secondary.update(NNUNET_SECONDARY)
    for module, requirement in pinned.items():
        if not installed(module):
            steps.append(InstallStep("pip", requirement, no_deps=True))
    for module, requirement in secondary.items():
        if not installed(module) and module not in SLICER_OWNED:
            steps.append(InstallStep("pip", requirement))
    return steps


def describe(steps: list[InstallStep]) -> str:
    names = ", ".join(step.requirement if step.kind == "pip" else f"PyTorch {step.requirement}" for step in steps)
    return f"MedDL needs these Python packages, which will be downloaded and installed: {names}."


def ensure_dependencies(confirm: Callable[[str], bool], nnunet: bool = False) -> bool:
    """Inside Slicer: install what is missing if `confirm(message)` says yes. True when ready."""
    steps = install_plan(nnunet=nnunet)
    if not steps:
        return True
    if not confirm(describe(steps)):
        return False
    import slicer

    for step in steps:
        if step.kind == "torch":
            import PyTorchUtils

            torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
                askConfirmation=False, torchVersionRequirement=step.requirement)
            if torch is None:
                return False
        else:
            slicer.util.pip_install(f"{step.requirement} --no-deps" if step.no_deps else step.requirement)
    return not install_plan(nnunet=nnunet)
