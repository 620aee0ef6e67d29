"""First-use dependency plan: only what is missing, never Slicer's own numpy/SimpleITK/VTK; the optional parts
(nnU-Net, each promptable family) on their first use."""

from __future__ import annotations

import json
import os

import pytest
import slicer.util
from meddl.models import store
from MedDLLib import dependencies
from MedDLLib.dependencies import SLICER_OWNED, InstallStep, describe, install_plan, promptable_family


def test_nothing_to_do_when_all_present():
    assert install_plan(lambda module: True) == []


def test_fresh_slicer_gets_torch_through_pytorch_utils_then_pinned_monai_without_deps():
    present = {"numpy", "scipy", "SimpleITK", "vtk"}
    steps = install_plan(lambda module: module in present)
    assert steps[0] == InstallStep("torch", ">=2.1")
    assert InstallStep("pip", "monai==1.6.1", no_deps=True) in steps
    assert InstallStep("pip", "jsonschema>=4.18") in steps  # the engine validates model cards with it
    assert all(step.requirement.split("=")[0] not in SLICER_OWNED for step in steps)
    assert "PyTorch" in describe(steps) and "monai==1.6.1" in describe(steps)


def test_missing_secondary_requirement_is_installed_alone():
    steps = install_plan(lambda module: module != "scipy")
    assert steps == [InstallStep("pip", "scipy")]


def test_nnunet_packages_come_only_with_an_nnunet_model_and_without_their_dependencies():
    present = {"torch", "monai", "numpy", "scipy", "jsonschema", "SimpleITK", "vtk"}
    assert install_plan(lambda module: module in present) == []
    steps = install_plan(lambda module: module in present, nnunet=True)
    assert InstallStep("pip", "nnunetv2==2.8.1", no_deps=True) in steps
    assert InstallStep("pip", "dynamic_network_architectures==0.4.4", no_deps=True) in steps
    assert not any(name in step.requirement for step in steps for name in ("torchvision", "timm", "torch=="))


def test_nninteractive_comes_with_nnunet_and_without_its_server_stack():
    present = {"torch", "monai", "numpy", "scipy", "jsonschema", "SimpleITK", "vtk"}
    steps = install_plan(lambda module: module in present, nninteractive=True)
    assert InstallStep("pip", "nninteractive==2.6.0", no_deps=True) in steps
    assert InstallStep("pip", "nninteractive-client==2.6.0", no_deps=True) in steps
    assert InstallStep("pip", "nnunetv2==2.8.1", no_deps=True) in steps  # nnInteractive builds its network with it
    assert InstallStep("pip", "batchgeneratorsv2==0.3.6") in steps  # nnU-Net's trainer module imports it
    assert not any(name in step.requirement for step in steps for name in ("sam2", "hydra", "fastapi", "huggingface"))


def test_sam2_is_built_against_the_installed_torch_without_cuda_or_torchvision():
    present = {"torch", "monai", "numpy", "scipy", "jsonschema", "SimpleITK", "vtk", "yaml", "PIL", "tqdm"}
    steps = install_plan(lambda module: module in present, sam2=True)
    sam2 = InstallStep("pip", "sam2==1.1.0", no_deps=True, build_isolation=False, env=(("SAM2_BUILD_CUDA", "0"),))
    assert steps[0] == sam2 and dependencies.pip_arguments(sam2) == "sam2==1.1.0 --no-deps --no-build-isolation"
    assert InstallStep("pip", "hydra-core==1.3.8", no_deps=True) in steps
    assert InstallStep("pip", "iopath==0.1.10", no_deps=True) in steps
    assert InstallStep("pip", "omegaconf==2.3.0") in steps
    assert InstallStep("pip", "antlr4-python3-runtime==4.9.3") in steps
    assert not any(name in step.requirement for step in steps for name in ("torchvision", "nnunetv2", "nninteractive"))
    everything = present | {*dependencies.SAM2_PINNED, *dependencies.SAM2_SECONDARY}
    assert install_plan(lambda module: module in everything, sam2=True) == []


def test_nninteractive_is_told_apart_from_its_client_in_their_shared_namespace():
    installed = dependencies.is_installed
    assert not installed("no_such_package_here.inference.inference_session")  # no error for a missing parent
    assert installed("MedDLLib.dependencies") and not installed("MedDLLib.no_such_module")


@pytest.fixture
def pip(monkeypatch):
    """slicer.util.pip_install faked: it records its arguments with SAM2_BUILD_CUDA as pip's process would see it,
    and makes the requirement's module importable."""
    present = {"torch", "monai", "numpy", "scipy", "jsonschema", "SimpleITK", "vtk"}
    tables = (dependencies.SAM2_PINNED, dependencies.SAM2_SECONDARY)
    modules = {requirement: module for table in tables for module, requirement in table.items()}
    calls = []

    def pip_install(arguments: str) -> None:
        calls.append((arguments, os.environ.get("SAM2_BUILD_CUDA")))
        present.add(modules[arguments.split()[0]])

    monkeypatch.setattr(dependencies, "is_installed", lambda module: module in present)
    monkeypatch.setattr(slicer.util, "pip_install", pip_install)
    monkeypatch.delenv("SAM2_BUILD_CUDA", raising=False)
    return calls


def test_choosing_a_sam2_model_asks_once_then_installs_its_packages(pip):
    asked = []
    assert dependencies.ensure_dependencies(lambda message: asked.append(message) or True, sam2=True)
    assert len(asked) == 1 and "sam2==1.1.0" in asked[0] and "hydra-core==1.3.8" in asked[0]
    assert pip[0] == ("sam2==1.1.0 --no-deps --no-build-isolation", "0")  # built without the CUDA extension
    assert ("hydra-core==1.3.8 --no-deps", None) in pip and "SAM2_BUILD_CUDA" not in os.environ
    assert dependencies.ensure_dependencies(lambda message: asked.append(message) or True, sam2=True)
    assert len(asked) == 1  # installed: not asked again


def test_declining_the_install_installs_nothing(pip):
    assert not dependencies.ensure_dependencies(lambda message: False, sam2=True)
    assert pip == []


def test_a_promptable_models_family_is_told_by_its_files_without_torch(tmp_path):
    nninteractive = tmp_path / "clicks"
    nninteractive.mkdir()
    (nninteractive / "inference_session_class.json").write_text("{}")
    checkpoint = tmp_path / "medsam2.pt"
    checkpoint.write_bytes(b"weights")
    folder = tmp_path / "sam"
    folder.mkdir()
    (folder / "checkpoint.pt").write_bytes(b"weights")
    assert promptable_family(str(nninteractive)) == "nnInteractive"
    assert promptable_family(str(checkpoint)) == promptable_family(str(folder)) == "SAM 2"
    assert promptable_family(str(tmp_path / "missing.pt")) == promptable_family("not-in-the-library") == ""
    assert promptable_family(str(tmp_path)) == ""


def test_a_library_models_family_comes_from_its_installed_files():
    library = store.models_dir() / "medsam2"
    (library / "promptable").mkdir(parents=True)
    (library / "promptable" / "medsam2.pt").write_bytes(b"weights")
    (library / store.RECORD).write_text(json.dumps({"kind": "promptable", "model_path": "promptable/medsam2.pt"}))
    assert promptable_family("medsam2") == "SAM 2"
    (library / store.RECORD).write_text("{")  # a broken entry: the job reports it
    assert promptable_family("medsam2") == ""
