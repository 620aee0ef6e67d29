"""Writing a trained network as a MONAI bundle (Model Zoo layout) with MedDL's card, whole or not at all."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import torch

from ..models.formats import MEDDL_CARD
from ..models.store import RECORD
from ..outputs import staged_folder


def bundle_configs(card: dict) -> tuple[dict, dict]:
    """metadata.json and inference.json in the Zoo's shape, with no executable expressions."""
    labels = {"0": "background", **{str(label["value"]): label["name"] for label in card["labels"]}}
    metadata = {
        "name": card["name"], "version": "0.1.0", "license": card["license"],
        "description": card.get("provenance", ""), "task": card["task"],
        "changelog": {"0.1.0": f"trained by MedDL on {datetime.date.today().isoformat()}"},
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "num_channels": card["input"]["channels"],
                                 "spatial_shape": card["inference"]["roi_size"], "dtype": "float32",
                                 "is_patch_data": True}},
            "outputs": {"pred": {"type": "image", "format": "segmentation",
                                 "num_channels": card["network"]["args"]["out_channels"],
                                 "spatial_shape": card["inference"]["roi_size"], "dtype": "float32",
                                 "is_patch_data": True, "channel_def": labels}}},
    }
    inference = {
        "network_def": {"_target_": card["network"]["class"], **card["network"]["args"]},
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"}, {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "NormalizeIntensityd", "keys": "image"}]},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": card["inference"]["roi_size"],
                    "sw_batch_size": card["inference"]["sw_batch_size"], "overlap": card["inference"]["overlap"]},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True}]},
    }
    return metadata, inference


def write_bundle(out: Path, network: torch.nn.Module, card: dict, replace: bool = False,
                 record: dict | None = None) -> Path:
    """The bundle folder, whole; `replace` rewrites an earlier checkpoint; `record` makes it a library install."""
    metadata, inference = bundle_configs(card)
    with staged_folder(out, replace) as staging:
        if record is not None:
            (staging / RECORD).write_text(json.dumps(record, indent=1))
        (staging / "configs").mkdir()
        (staging / "models").mkdir()
        (staging / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=1))
        (staging / "configs" / "inference.json").write_text(json.dumps(inference, indent=1))
        (staging / MEDDL_CARD).write_text(json.dumps(card, indent=1))
        torch.save(network.state_dict(), staging / "models" / "model.pt")
    return out
