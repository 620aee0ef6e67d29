"""First-use installation of MedDL's Python dependencies inside Slicer, after asking the user.

torch comes through the PyTorch extension (which picks the CUDA build matching the driver);
MONAI is installed pinned and without its dependencies, and then only those of its
requirements that are missing, so Slicer's own numpy, SimpleITK and VTK are never replaced.
Optional parts come the same way on their first use: nnU-Net v2 models, and the package of each family of
promptable models (nnInteractive, SAM 2).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from meddl.errors import MeddlError
from meddl.models import store
from meddl.models.formats import is_promptable_folder

TORCH_REQUIREMENT = ">=2.1"
PINNED_PACKAGES = {"monai": "monai==1.6.1"}
# Requirements of the pinned packages, installed only when missing (never upgraded).
SECONDARY_PACKAGES = {"numpy": "numpy", "scipy": "scipy", "jsonschema": "jsonschema>=4.18"}
# nnU-Net v2 models only, on their first use: nnunetv2 and its network library pinned and without their
# dependencies (which would pull torchvision, timm and a matching torch), then only the packages its
# preprocessing, inference and trainer module (which builds the networks) import, when missing.
NNUNET_PINNED = {"nnunetv2": "nnunetv2==2.8.1", "dynamic_network_architectures": "dynamic_network_architectures==0.4.4"}
NNUNET_SECONDARY = {"acvl_utils": "acvl_utils==0.2.6", "batchgenerators": "batchgenerators==0.25.5",
                    "batchgeneratorsv2": "batchgeneratorsv2==0.3.6", "skimage": "scikit-image", "pandas": "pandas",
                    "blosc2": "blosc2", "nibabel": "nibabel", "matplotlib": "matplotlib", "seaborn": "seaborn"}
# nnInteractive models (with nnU-Net's packages, which build their network): its two distributions, which share
# the nnInteractive namespace (a module of each tells them apart), without the server stack and huggingface_hub.
NNINTERACTIVE_PINNED = {"nnInteractive.inference.inference_session": "nninteractive==2.6.0",
                        "nnInteractive.inference.remote": "nninteractive-client==2.6.0"}
# SAM 2 models: sam2 built here against the installed torch, without its CUDA extension (MedDL turns off the one
# step that uses it) and without torchvision, which its video predictor does not import; then what its
# configuration (hydra, OmegaConf) and file handling import.
SAM2_PINNED = {"sam2": "sam2==1.1.0", "hydra": "hydra-core==1.3.8", "iopath": "iopath==0.1.10"}
SAM2_SECONDARY = {"omegaconf": "omegaconf==2.3.0", "antlr4": "antlr4-python3-runtime==4.9.3",
                  "portalocker": "portalocker==4.4.2", "tqdm": "tqdm", "yaml": "pyyaml", "PIL": "pillow",
                  "packaging": "packaging"}
SOURCE_BUILDS = {"sam2": {"build_isolation": False, "env": (("SAM2_BUILD_CUDA", "0"),)}}
SAM2_CHECKPOINT_SUFFIXES = (".pt", ".pth")
# Packages Slicer ships and MedDL must never reinstall.
SLICER_OWNED = ("numpy", "SimpleITK", "vtk")


@dataclass(frozen=True)
class InstallStep:
    """One installation action: 'torch' through PyTorchUtils, or a pip requirement (built from source, for a
    package without wheels, against what is installed when not `build_isolation`, with `env` set)."""

    kind: str
    requirement: str
    no_deps: bool = False
    build_isolation: bool = True
    env: tuple[tuple[str, str], ...] = ()


def is_installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a submodule's package is missing
        return False


def install_plan(installed: Optional[Callable[[str], bool]] = None, nnunet: bool = False,
                 nninteractive: bool = False, sam2: bool = False) -> list[InstallStep]:
    """What is missing, in installation order; empty when everything is there. `nnunet`: also what nnU-Net v2
    models need; `nninteractive`, `sam2`: also what promptable models of that family need."""
    installed = installed or is_installed
    steps = []
    if not installed("torch"):
        steps.append(InstallStep("torch", TORCH_REQUIREMENT))
    pinned, secondary = dict(PINNED_PACKAGES), dict(SECONDARY_PACKAGES)
    for wanted, more_pinned, more_secondary in ((nnunet or nninteractive, NNUNET_PINNED, NNUNET_SECONDARY),
                                                (nninteractive, NNINTERACTIVE_PINNED, {}),
                                                (sam2, SAM2_PINNED, SAM2_SECONDARY)):
        if wanted:
            pinned.update(more_pinned)
            secondary.update(more_secondary)
    for module, requirement in pinned.items():
        if not installed(module):
            steps.append(InstallStep("pip", requirement, no_deps=True, **SOURCE_BUILDS.get(module, {})))
    for module, requirement in secondary.items():
        if not installed(module) and module not in SLICER_OWNED:
            steps.append(InstallStep("pip", requirement))
    return steps


def describe(steps: list[InstallStep]) -> str:
    names = ", ".join(step.requirement if step.kind == "pip" else f"PyTorch {step.requirement}" for step in steps)
    return f"MedDL needs these Python packages, which will be downloaded and installed: {names}."


def pip_arguments(step: InstallStep) -> str:
    """What `slicer.util.pip_install` is given for a pip step."""
    flags = [flag for flag, wanted in (("--no-deps", step.no_deps), ("--no-build-isolation", not step.build_isolation))
             if wanted]
    return " ".join([step.requirement, *flags])


@contextlib.contextmanager
def _environment(values: tuple[tuple[str, str], ...]) -> Iterator[None]:
    """os.environ with `values` set (pip's process inherits it), as it was afterwards."""
    saved = {name: os.environ.get(name) for name, _value in values}
    os.environ.update(dict(values))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def promptable_family(model: str) -> str:
    """The family whose package a promptable model (a path or a library id) needs, told by its files as
    `meddl.interactive` tells them apart (without importing it: that loads torch): 'nnInteractive', 'SAM 2', or
    '' when it is not on this computer (a model of the MedDL server's library, a wrong path: the job says so)."""
    try:
        path = Path(model or "")
        if not path.exists() and store.ID_PATTERN.match(model or ""):
            installed = store.installed(model)
            path = installed.model_path if installed is not None else path
        if is_promptable_folder(path):
            return "nnInteractive"
        checkpoint = path / "checkpoint.pt" if path.is_dir() else path
        return "SAM 2" if checkpoint.suffix in SAM2_CHECKPOINT_SUFFIXES and checkpoint.is_file() else ""
    except (OSError, ValueError, MeddlError):  # a broken library entry or an odd path
        return ""


def ensure_dependencies(confirm: Callable[[str], bool], nnunet: bool = False, nninteractive: bool = False,
                        sam2: bool = False) -> bool:
    """Inside Slicer: install what is missing if `confirm(message)` says yes. True when ready."""
    needs = {"nnunet": nnunet, "nninteractive": nninteractive, "sam2": sam2}
    steps = install_plan(**needs)
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
            with _environment(step.env):
                slicer.util.pip_install(pip_arguments(step))
    importlib.invalidate_caches()  # the new packages' folders, for the check below and the imports after it
    return not install_plan(**needs)
