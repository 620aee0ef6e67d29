"""nnU-Net v2 results folders as MedDL models: found, checked, loaded without running code, and carded.

A results folder is `DatasetNNN_Name/Trainer__Plans__configuration/` with plans.json, dataset.json and
fold_*/checkpoint_final.pth; its parent (several configurations) works too. Checkpoints are pickles:
they load with `weights_only=True` and an allow-list of exactly the types nnU-Net puts in them (numpy
scalars and dtypes, torch.device). The network is built by the nnU-Net trainer named in the checkpoint,
which must be one the installed nnunetv2 ships, from a `dynamic_network_architectures` class named in the
plans whose arguments import only `torch.nn` classes; anything else needs `--trust-model`. nnunetv2 is
imported only when such a model is used.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..errors import ModelError
from . import networks
from . import nnunet_postprocessing as postprocessing
from .card import card_from_dict
from .formats import nnunet_results_folder
from .loaded import LoadedModel
from .nnunet_postprocessing import Postprocessing

CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_best.pth")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ModelError(f"{path} is not readable JSON: {error}") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path} must hold a JSON object")
    return data


def _labels(dataset: dict, source: str) -> list[dict]:
    """Card labels from dataset.json: {name: value} or, region-based, {name: [values]} with regions_class_order."""
    labels = dataset.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise ModelError(f"{source}: 'labels' must map label names to values")
    foreground = [(name, value) for name, value in labels.items() if name != "background" and value != 0]
    if any(isinstance(value, list) for _, value in foreground):
        order = dataset.get("regions_class_order")
        if not isinstance(order, list) or len(order) != len(foreground):
            raise ModelError(f"{source}: region-based labels need 'regions_class_order' with one value per region")
        return [{"value": int(value), "name": str(name)} for (name, _), value in zip(foreground, order)]
    return [{"value": value, "name": str(name)} for name, value in foreground]


def _channel_names(dataset: dict, source: str) -> list[str]:
    names = dataset.get("channel_names", dataset.get("modality"))
    if not isinstance(names, dict) or not names:
        raise ModelError(f"{source}: 'channel_names' must name the input channels")
    return [str(names[key]) for key in sorted(names, key=lambda key: int(key))]


def card_for(parts: NnunetParts) -> dict:
    """The MedDL card of an nnU-Net results folder: labels and channels from dataset.json, the configuration,
    folds, cascade stage and postprocessing in its provenance."""
    folder, dataset = parts.folder, parts.dataset_json
    source = str(folder / "dataset.json")
    channels = _channel_names(dataset, source)
    name = folder.parent.name or folder.name
    configuration = parts.configuration
    stages = f"configuration {configuration}"
    if parts.previous is not None:
        stages += f" after {parts.previous.configuration} (folds " \
                  f"{', '.join(parts.previous.folds)})"
    steps = parts.postprocessing.describe() if parts.postprocessing else []
    return {
        "name": name, "title": f"{name} (nnU-Net {configuration})", "task": "segmentation",
        "description": str(dataset.get("description", "")),
        "license": str(dataset.get("licence") or dataset.get("license") or "not stated in dataset.json"),
        "input": {"channels": len(channels), "modality": ", ".join(channels)},
        "labels": _labels(dataset, source),
        "provenance": f"nnU-Net v2 results folder {folder.name}: trainer {parts.trainer_name}, {stages}, folds "
                      f"{', '.join(parts.folds)}, postprocessing: {'; '.join(steps) or 'none'}",
        "nnunet": {"configuration": configuration, "folds": parts.folds, "channel_names": channels,
                   "trainer": parts.trainer_name, "postprocessing": steps,
                   "previous_stage": parts.previous.configuration
                   if parts.previous is not None else None},
    }


def _allowed_globals() -> list:
    """Exactly the non-tensor types nnU-Net checkpoints hold, under their numpy 1 and numpy 2 names."""
    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    dtypes = [getattr(np.dtypes, name) for name in ("Float64DType", "Float32DType", "Int64DType", "Int32DType",
                                                      "BoolDType", "Float16DType") if hasattr(np, "dtypes")]
    return [scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype, *dtypes, torch.device]


def load_checkpoint(path: Path, trust: bool) -> dict:
    """An nnU-Net checkpoint, unpickled only into tensors, containers, numpy scalars and torch.device
    (anything else, such as an object whose unpickling runs code, only with `trust`)."""
    checkpoint = networks.load_checkpoint(path, trust, _allowed_globals(),
                                          "holds objects other than nnU-Net's weights and settings; unpickling "
                                          "them could run code")
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise ModelError(f"{path} is not an nnU-Net checkpoint (no network_weights)")
    return checkpoint


def _check_plans_code(configuration_manager, trust: bool, source: str) -> None:
    """The plans name the network class and classes for its arguments: only nnU-Net's own network library
    and torch.nn without trust."""
    names = [configuration_manager.network_arch_class_name]
    kwargs = configuration_manager.network_arch_init_kwargs
    names += [kwargs[key] for key in configuration_manager.network_arch_init_kwargs_req_import if kwargs.get(key)]
    foreign = [name for name in names if not str(name).startswith(("dynamic_network_architectures.", "torch.nn."))]
    if foreign and not trust:
        raise ModelError(f"{source} names code outside nnU-Net's network library ({', '.join(map(str, foreign))}); "
                         "pass --trust-model only if you trust its source")


def _find_trainer(name: str):
    """The class `name` in nnunetv2's trainer package (as nnU-Net looks it up), or None; a trainer module whose
    optional dependencies are missing (e.g. timm for some variants) is skipped, not fatal."""
    import importlib
    import pkgutil

    import nnunetv2.training.nnUNetTrainer as trainers

    for module in pkgutil.walk_packages(trainers.__path__, trainers.__name__ + "."):
        try:
            found = getattr(importlib.import_module(module.name), name, None)
        except Exception:  # noqa: BLE001 - an optional trainer that cannot be imported here
            continue
        if isinstance(found, type):
            return found
    return None


def _trainer_class(name: str, trust: bool):
    """The trainer class nnU-Net ships under `name` (it builds the network)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    found = _find_trainer(name) if name.isidentifier() else None
    if found is None or not issubclass(found, nnUNetTrainer):
        raise ModelError(f"the checkpoint was trained with {name!r}, a trainer nnunetv2 {nnunetv2_version()} does "
                         "not ship; its code would have to be installed into nnunetv2 and trusted (--trust-model)")
    if found is not nnUNetTrainer and not trust and "build_network_architecture" in vars(found):
        raise ModelError(f"trainer {name!r} builds its own network with its own code; pass --trust-model only "
                         "if you trust it")
    return found


def nnunetv2_version() -> str:
    from importlib import metadata

    return metadata.version("nnunetv2")


def _require_nnunet() -> None:
    try:
        import nnunetv2  # noqa: F401
    except ImportError:
        raise ModelError("this is an nnU-Net v2 model: MedDL runs it with the nnunetv2 package, which is not "
                         "installed (`pip install nnunetv2`; in Slicer, MedDL installs it on first use)") from None


def _folds(folder: Path, folds: Optional[tuple[str, ...]]) -> list[tuple[str, Path]]:
    available = {}
    for fold_folder in sorted(folder.glob("fold_*")):
        checkpoint = next((fold_folder / name for name in CHECKPOINTS if (fold_folder / name).is_file()), None)
        if checkpoint is not None:
            available[fold_folder.name[len("fold_"):]] = checkpoint
    chosen = list(folds) if folds else sorted(available)
    missing = [fold for fold in chosen if fold not in available]
    if missing:
        raise ModelError(f"{folder} has no checkpoint for fold(s) {', '.join(missing)}; it has "
                         f"{', '.join(available) or 'none'}")
    return [(fold, available[fold]) for fold in chosen]


@dataclass
class NnunetParts:
    """What nnU-Net's predictor needs for one stage, built from its results folder; a cascade's full-resolution
    stage holds its low-resolution stage in `previous`, and `postprocessing` is applied to the final labels."""

    plans_manager: Any
    configuration_manager: Any
    dataset_json: dict
    parameters: list[dict]
    trainer_name: str
    mirroring_axes: Optional[tuple[int, ...]]
    network: Any
    configuration: str
    folds: list[str]
    folder: Path
    previous: Optional[NnunetParts] = None
    postprocessing: Optional[Postprocessing] = None


@dataclass
class Plans:
    """A folder's plans.json and dataset.json, and nnU-Net's managers of one configuration of them."""

    plans: dict
    dataset: dict
    plans_manager: Any
    configuration_manager: Any
    label_manager: Any


def read_plans(folder: Path, configuration: str, trust: bool) -> Plans:
    """The plans of `folder` for `configuration`; ModelError when they do not describe it, or (untrusted) name code
    outside nnU-Net's library. nnInteractive folders share this layout."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans, dataset = _read_json(folder / "plans.json"), _read_json(folder / "dataset.json")
    try:
        plans_manager = PlansManager(plans)
        configuration_manager = plans_manager.get_configuration(configuration)
        label_manager = plans_manager.get_label_manager(dataset)
    except Exception as error:  # noqa: BLE001 - malformed plans
        raise ModelError(f"{folder / 'plans.json'} does not describe configuration {configuration!r}: "
                         f"{error}") from None
    _check_plans_code(configuration_manager, trust, str(folder / "plans.json"))
    return Plans(plans, dataset, plans_manager, configuration_manager, label_manager)


def _load_stage(folder: Path, trust: bool, folds: Optional[tuple[str, ...]]) -> NnunetParts:
    """One results folder's plans, fold weights and network (built by its nnU-Net trainer)."""
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    checkpoints = [(fold, load_checkpoint(file, trust)) for fold, file in _folds(folder, folds)]
    first = checkpoints[0][1]
    trainer_name = str(first.get("trainer_name", "nnUNetTrainer"))
    configuration_name = str(first.get("init_args", {}).get("configuration", folder.name.rsplit("__", 1)[-1]))
    read = read_plans(folder, configuration_name, trust)
    trainer = _trainer_class(trainer_name, trust)
    try:
        network = trainer.build_network_architecture(
            read.plans_manager, read.configuration_manager,
            determine_num_input_channels(read.plans_manager, read.configuration_manager, read.dataset),
            read.label_manager.num_segmentation_heads, enable_deep_supervision=False)
        network.load_state_dict(first["network_weights"])
    except Exception as error:  # noqa: BLE001 - plans and weights that do not fit
        raise ModelError(f"the network of {folder} cannot be built from its plans and weights: {error}") from None
    mirroring = first.get("inference_allowed_mirroring_axes")
    return NnunetParts(read.plans_manager, read.configuration_manager, read.dataset,
                       [checkpoint["network_weights"] for _, checkpoint in checkpoints], trainer_name,
                       tuple(mirroring) if mirroring is not None else None, network.eval(), configuration_name,
                       [fold for fold, _ in checkpoints], folder)


def _previous_stage(folder: Path, name: str, trust: bool, folds: Optional[tuple[str, ...]]) -> NnunetParts:
    """A cascade's low-resolution stage: the same trainer and plans, configuration `name`, beside `folder`."""
    trainer, plans, _ = folder.name.split("__")
    previous = folder.parent / f"{trainer}__{plans}__{name}"
    if not previous.is_dir():
        raise ModelError(f"{folder.name} is the second stage of an nnU-Net cascade: its first stage {previous.name} "
                         f"must be beside it in {folder.parent}")
    stage = _load_stage(previous, trust, folds)
    if stage.configuration_manager.previous_stage_name:
        raise ModelError(f"{previous.name} is itself a cascade stage; nnU-Net cascades have two stages")
    return stage


def load_nnunet(path: Path, trust: bool = False, folds: Optional[tuple[str, ...]] = None,
                configuration: Optional[str] = None, overrides: Optional[dict] = None) -> LoadedModel:
    """A LoadedModel running an nnU-Net v2 results folder (pipeline type "nnunet"); `overrides` replace card
    fields derived from the folder (a catalog entry's, e.g. the input orientation its publisher feeds), labels
    merged by value."""
    _require_nnunet()
    folder = nnunet_results_folder(Path(path), configuration)
    if folder is None:
        raise ModelError(f"{path} is not an nnU-Net v2 results folder (plans.json, dataset.json, "
                         "fold_*/checkpoint_final.pth)")
    parts = _load_stage(folder, trust, folds)
    networks = {"network": parts.network}
    if parts.configuration_manager.previous_stage_name:
        parts.previous = _previous_stage(folder, parts.configuration_manager.previous_stage_name, trust, folds)
        networks["previous stage"] = parts.previous.network
    parts.postprocessing = postprocessing.load(folder, parts.folds, trust)
    card = card_from_dict(_with_overrides(card_for(parts), overrides or {}), f"nnU-Net folder {folder}")
    return LoadedModel(card, networks, {"type": "nnunet", "parts": parts}, str(folder))


def _with_overrides(card: dict, overrides: dict) -> dict:
    """`card` with a catalog entry's overrides: objects merged key by key, labels by value (so an entry can add
    terminology to the labels dataset.json names), anything else replaced."""
    card = dict(card)
    for key, value in overrides.items():
        if key == "labels" and isinstance(value, list):
            by_value = {label.get("value"): label for label in value if isinstance(label, dict)}
            unknown = sorted(set(by_value) - {label["value"] for label in card["labels"]}, key=str)
            if unknown:
                raise ModelError(f"the catalog entry gives labels {unknown} that the model does not have")
            card["labels"] = [{**label, **by_value.get(label["value"], {})} for label in card["labels"]]
        elif isinstance(value, dict) and isinstance(card.get(key), dict):
            card[key] = {**card[key], **value}
        else:
            card[key] = value
    return card
