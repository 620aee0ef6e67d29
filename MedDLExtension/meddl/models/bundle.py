"""MONAI bundle folders (the Model Zoo layout): configs/metadata.json, configs/inference.json, models/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from ..errors import ModelError
from .bundle_workflow import INFER_IDS, config_path, is_workflow, read_config
from .card import card_from_dict
from .formats import MEDDL_CARD, TRUST_MEANS
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


BACKGROUND_NAMES = ("background", "bg", "none", "other")


def _is_classifier(prediction: dict[str, Any]) -> bool:
    """A bundle whose output is class scores: type/format say so, or its shape is [1, classes]."""
    shape = prediction.get("spatial_shape")
    return (prediction.get("type") in ("probabilities", "classes")
            or prediction.get("format") in ("classes", "classification", "probabilities")
            or (isinstance(shape, list) and len(shape) == 2 and shape[0] == 1
                and shape[1] == prediction.get("num_channels")))


def _labels(prediction: dict[str, Any], classes: bool) -> list[dict[str, Any]]:
    """Labels from the output's channel_def (or label_def): every class of a classifier, the values above 0 of a
    label map whose channel 0 is the background, else one label a channel (binary masks: value = channel + 1)."""
    names = prediction.get("channel_def") or prediction.get("label_def") or {}
    try:
        items = sorted(((int(key), str(name)) for key, name in names.items()), key=lambda item: item[0])
    except (AttributeError, TypeError, ValueError):
        raise ModelError("bundle metadata: the output's channel_def must map channel numbers to names") from None
    if classes:
        return [{"value": value, "name": name} for value, name in items]
    if items and items[0][0] == 0 and items[0][1].lower() not in BACKGROUND_NAMES:  # binary masks, one a channel
        return [{"value": value + 1, "name": name} for value, name in items]
    return [{"value": value, "name": name} for value, name in items if value > 0]


def _input_fields(image_in: dict[str, Any], classes: bool) -> dict[str, Any]:
    """Card input fields the metadata gives: channels (and their names), modality, 2D or 3D, a classifier's size."""
    shape = image_in.get("spatial_shape")
    dims = len(shape) if isinstance(shape, list) and len(shape) in (2, 3) else 3
    fields: dict[str, Any] = {"channels": image_in.get("num_channels", 1), "modality": image_in.get("modality", ""),
                              "spatial_dims": dims}
    names = image_in.get("channel_def") or {}
    if isinstance(names, dict) and fields["channels"] > 1 and len(names) == fields["channels"]:
        fields["channel_names"] = [str(names[key]) for key in sorted(names, key=lambda key: int(key))]
    if classes and isinstance(shape, list) and all(isinstance(n, int) for n in shape) and len(shape) == dims:
        fields["size"] = shape
    return fields


DDF_WORDS = ("ddf", "dvf", "displacement")


def registration_keys(metadata: dict[str, Any]) -> Optional[dict[str, str]]:
    """For a registration bundle (its metadata's inputs name a fixed and a moving image): the fixed and moving
    input keys and the output key of its dense displacement field (the output whose name, type or format says
    ddf/displacement, else "pred"); None for any other bundle."""
    formats = metadata.get("network_data_format", {}) if isinstance(metadata, dict) else {}
    inputs = formats.get("inputs", {}) if isinstance(formats, dict) else {}
    outputs = formats.get("outputs", {}) if isinstance(formats, dict) else {}
    if not isinstance(inputs, dict) or not isinstance(outputs, dict):
        return None
    fixed = next((key for key in inputs if "fixed" in str(key).lower()), None)
    moving = next((key for key in inputs if "moving" in str(key).lower()), None)
    if fixed is None or moving is None or fixed == moving:
        return None

    def says_ddf(key: str) -> bool:
        spec = outputs[key] if isinstance(outputs[key], dict) else {}
        text = " ".join(str(item).lower() for item in (key, spec.get("type", ""), spec.get("format", "")))
        return any(word in text for word in DDF_WORDS)

    ddf = next((key for key in outputs if says_ddf(key)), "pred")
    return {"fixed": str(fixed), "moving": str(moving), "ddf": str(ddf)}


def _registration_card(metadata: dict[str, Any], inference: dict[str, Any], keys: dict[str, str]) -> dict[str, Any]:
    """The card of a registration bundle: one channel a image, no labels, the network it names."""
    fixed = metadata.get("network_data_format", {}).get("inputs", {}).get(keys["fixed"], {})
    network_def = dict(inference.get("network_def", {})) if isinstance(inference.get("network_def"), dict) else {}
    target = str(network_def.pop("_target_", ""))
    return {
        "name": metadata.get("name", "bundle"), "task": "registration",
        "description": metadata.get("description", ""), "license": metadata.get("license", "see the bundle"),
        "input": {"channels": 1, "modality": fixed.get("modality", "") if isinstance(fixed, dict) else "",
                  "intensity": {"method": "none"}},
        "labels": [], "network": {"class": target, "args": network_def} if target else None,
        "registration": {"bundle_inputs": [keys["fixed"], keys["moving"]], "bundle_output": keys["ddf"]},
        "provenance": f"MONAI bundle {metadata.get('name', '')} {metadata.get('version', '')}".strip(),
    }


def card_dict_from_bundle(metadata: dict[str, Any], inference: dict[str, Any]) -> dict[str, Any]:
    """Derive a MedDL card from the Zoo's metadata.json and the standard inference.json transforms."""
    keys = registration_keys(metadata)
    if keys is not None:
        return _registration_card(metadata, inference, keys)
    formats = metadata.get("network_data_format", {})
    image_in = formats.get("inputs", {}).get("image", {})
    prediction = formats.get("outputs", {}).get("pred", {})
    classes = _is_classifier(prediction)
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
    inferer = inference.get("inferer", {}) if isinstance(inference.get("inferer"), dict) else {}
    roi = inferer.get("roi_size")
    return {
        "name": metadata.get("name", "bundle"), "task": "classification" if classes else "segmentation",
        "description": metadata.get("description", ""), "license": metadata.get("license", "see the bundle"),
        "input": {**_input_fields(image_in, classes), "spacing": spacing.get("pixdim") if spacing else None,
                  "orientation": orientation.get("axcodes") if orientation else None, "intensity": intensity},
        "inference": {"roi_size": roi if isinstance(roi, list) and len(roi) == 3 else None,
                      "overlap": inferer.get("overlap", 0.25), "sw_batch_size": inferer.get("sw_batch_size", 1)},
        "output": {"mode": "argmax"}, "labels": _labels(prediction, classes),
        "network": {"class": target, "args": network_def} if target else None,
        "provenance": f"MONAI bundle {metadata.get('name', '')} {metadata.get('version', '')}".strip(),
    }


def with_overrides(card: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A bundle's card with a catalog entry's card_overrides: objects merged key by key, anything else (labels
    included: a bundle's metadata may not describe what its postprocessing writes) replaced."""
    card = dict(card)
    for key, value in overrides.items():
        card[key] = {**card[key], **value} if isinstance(value, dict) and isinstance(card.get(key), dict) else value
    return card


def load_bundle(folder: Path, trust: bool, overrides: Optional[dict[str, Any]] = None) -> LoadedModel:
    """Load a bundle. A trusted bundle whose config is a complete inference workflow runs through MONAI's bundle
    workflow; otherwise MedDL builds its network and runs it with its own pre- and postprocessing. Configs with
    executable expressions need the user's trust."""
    metadata = _read_json(folder / "configs" / "metadata.json")
    inference_path = config_path(folder)
    inference = read_config(inference_path) if inference_path else {}
    expressions = expressions_in(inference)
    if expressions and not trust:
        raise ModelError(
            f"bundle {folder} has executable expressions in {inference_path.relative_to(folder)} (e.g. "
            f"{expressions[0][:60]!r}); load it only if you trust its source (--trust-model / 'trust this model'). "
            f"{TRUST_MEANS}")
    card_dict = card_dict_from_bundle(metadata, inference)
    if (folder / MEDDL_CARD).is_file():
        card_dict.update(_read_json(folder / MEDDL_CARD))
    card = card_from_dict(with_overrides(card_dict, overrides or {}), f"model card of bundle {folder}")
    keys = registration_keys(metadata)
    if trust and inference_path and is_workflow(inference):
        image_key = next(iter(metadata.get("network_data_format", {}).get("inputs", {}) or {"image": 0}))
        pipeline = {"type": "monai-bundle", "folder": str(folder), "config": str(inference_path),
                    "image_key": image_key, **({"registration_keys": keys} if keys else {})}
        return LoadedModel(card, {}, pipeline, str(folder))
    if keys is not None:
        raise ModelError(f"bundle {folder} is a registration bundle (inputs {keys['fixed']!r} and {keys['moving']!r}): "
                         "MedDL runs one only through MONAI's bundle workflow, which needs a complete inference "
                         f"config ({', '.join(INFER_IDS)} and a run id) and --trust-model / 'trust this model'")
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
