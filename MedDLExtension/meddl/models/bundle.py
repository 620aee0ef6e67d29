"""MONAI bundle folders (the Model Zoo layout): configs/metadata.json, configs/inference.json, models/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ModelError
from .card import card_from_dict
from .formats import MEDDL_CARD
from .loaded import LoadedModel
from .networks import build_monai_network, load_checkpoint, load_torchscript, load_weights, state_dict_of


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"bundle file missing: {path}") from None
    except (OSError, json.JSONDecodeError) as error:
        raise ModelError(f"bundle file {path} is not valid JSON: {error}") from None


def expressions_in(config: Any) -> list[str]:
    """Executable MONAI config expressions ('$...') anywhere in a config."""
    if isinstance(config, str):
        return [config] if config.startswith("$") else []
    items = config.values() if isinstance(config, dict) else config if isinstance(config, list) else []
    return [found for item in items for found in expressions_in(item)]


def _find(config: Any, target: str) -> dict[str, Any] | None:
    """First dict in a config whose _target_ ends with `target`."""
    if isinstance(config, dict):
        if str(config.get("_target_", "")).endswith(target):
            return config
        config = list(config.values())
    if isinstance(config, list):
        for item in config:
            found = _find(item, target)
            if found is not None:
                return found
    return None


def card_dict_from_bundle(metadata: dict[str, Any], inference: dict[str, Any]) -> dict[str, Any]:
    """Derive a MedDL card from the Zoo's metadata.json and the standard inference.json transforms."""
    formats = metadata.get("network_data_format", {})
    image_in = formats.get("inputs", {}).get("image", {})
    prediction = formats.get("outputs", {}).get("pred", {})
    channel_def = prediction.get("channel_def", {})
    labels = [{"value": int(k), "name": v} for k, v in sorted(channel_def.items(), key=lambda kv: int(kv[0]))
              if int(k) > 0]
    network_def = dict(inference.get("network_def", {}))
    target = str(network_def.pop("_target_", ""))
    intensity: dict[str, Any] = {"method": "none"}
    scale = _find(inference.get("preprocessing", {}), "ScaleIntensityRanged")
    if scale:
        intensity = {"method": "range", **{k: scale[k] for k in ("a_min", "a_max", "b_min", "b_max") if k in scale},
                     "clip": bool(scale.get("clip", False))}
    elif _find(inference.get("preprocessing", {}), "NormalizeIntensityd"):
        intensity = {"method": "zscore"}
    spacing = _find(inference.get("preprocessing", {}), "Spacingd")
    orientation = _find(inference.get("preprocessing", {}), "Orientationd")
    inferer = inference.get("inferer", {})
    return {
        "name": metadata.get("name", "bundle"), "task": "segmentation",
        "description": metadata.get("description", ""), "license": metadata.get("license", "see the bundle"),
        "input": {"channels": image_in.get("num_channels", 1), "modality": image_in.get("modality", ""),
                  "spacing": spacing.get("pixdim") if spacing else None,
                  "orientation": orientation.get("axcodes") if orientation else None, "intensity": intensity},
        "inference": {"roi_size": inferer.get("roi_size"), "overlap": inferer.get("overlap", 0.25),
                      "sw_batch_size": inferer.get("sw_batch_size", 1)},
        "output": {"mode": "argmax"}, "labels": labels,
        "network": {"class": target, "args": network_def} if target else None,
        "provenance": f"MONAI bundle {metadata.get('name', '')} {metadata.get('version', '')}".strip(),
    }


def load_bundle(folder: Path, trust: bool) -> LoadedModel:
    """Load a bundle; configs with executable expressions need the user's trust."""
    metadata = _read_json(folder / "configs" / "metadata.json")
    inference_path = folder / "configs" / "inference.json"
    inference = _read_json(inference_path) if inference_path.exists() else {}
    expressions = expressions_in(inference)
    if expressions and not trust:
        raise ModelError(
            f"bundle {folder} has executable expressions in configs/inference.json (e.g. {expressions[0][:60]!r}); "
            "load it only if you trust its source (--trust-model / 'trust this model')"
        )
    card_dict = card_dict_from_bundle(metadata, inference)
    if (folder / MEDDL_CARD).is_file():
        card_dict.update(_read_json(folder / MEDDL_CARD))
    card = card_from_dict(card_dict, f"model card of bundle {folder}")
    torchscript, weights = folder / "models" / "model.ts", folder / "models" / "model.pt"
    if torchscript.is_file():
        network = load_torchscript(torchscript)
    elif weights.is_file():
        if expressions:
            network = _parse_trusted_network(folder, inference)
        else:
            network = build_monai_network(card.network, f"bundle {folder}")
        network = load_weights(network, state_dict_of(load_checkpoint(weights, trust), weights), weights)
    else:
        raise ModelError(f"bundle {folder} has neither models/model.ts nor models/model.pt")
    return LoadedModel(card, {"network": network}, {"type": "sliding-window"}, str(folder))


def _parse_trusted_network(folder: Path, inference: dict[str, Any]):
    """Let MONAI's own config parser build network_def (runs the bundle's expressions)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser(inference)
    parser["bundle_root"] = str(folder)
    try:
        return parser.get_parsed_content("network_def")
    except Exception as error:  # the bundle's own code may raise anything
        raise ModelError(f"bundle {folder}: cannot build network_def: {error}") from None
