"""First-use dependency plan: only what is missing, never Slicer's own numpy/SimpleITK/VTK."""

from __future__ import annotations

from MedDLLib.dependencies import SLICER_OWNED, InstallStep, describe, install_plan


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
