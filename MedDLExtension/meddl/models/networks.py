"""Safe construction of networks and loading of weights (no arbitrary code unless trusted)."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelError

STATE_DICT_KEYS = ("state_dict", "model", "network", "model_state_dict")


def build_monai_network(spec: dict[str, Any] | None, source: str) -> torch.nn.Module:
    """Instantiate a `monai.networks.nets` class named by a card's {"class", "args"}.

    An argument that is itself {"class", "args"} is built the same way (e.g. VoxelMorph's backbone).
    """
    import monai.networks.nets as nets

    if not spec or "class" not in spec:
        raise ModelError(f"{source} needs 'network': {{'class': <monai.networks.nets name>, 'args': {{...}}}}")
    name = str(spec["class"]).rsplit(".", 1)[-1]
    network_class = getattr(nets, name, None)
    if not (isinstance(network_class, type) and issubclass(network_class, torch.nn.Module)):
        raise ModelError(f"{source}: {spec['class']!r} is not a network class of monai.networks.nets")
    args = {key: build_monai_network(value, source) if isinstance(value, dict) and "class" in value else value
            for key, value in spec.get("args", {}).items()}
    try:
        return network_class(**args)
    except (TypeError, ValueError, AssertionError) as error:
        raise ModelError(f"{source}: cannot build {name} with the card's arguments: {error}") from None


def is_torchscript(path: Path) -> bool:
    """TorchScript archives carry compiled code; torch.save archives carry only data."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name or name.endswith("constants.pkl") for name in archive.namelist())


def looks_like_checkpoint(path: Path) -> bool:
    """torch.save writes a zip archive (or, in legacy format, a pickle starting with 0x80)."""
    with open(path, "rb") as stream:
        head = stream.read(2)
    return zipfile.is_zipfile(path) or (len(head) == 2 and head[0] == 0x80)


def load_torchscript(path: Path) -> torch.nn.Module:
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as error:
        raise ModelError(f"model file {path} is corrupt or not a TorchScript model: {_short(error)}") from None
    return module.eval()


def load_checkpoint(path: Path, trust: bool) -> Any:
    """torch.load with weights_only=True; a pickle needing code loads only when trusted."""
    if not looks_like_checkpoint(path):
        raise ModelError(f"model file {path} is corrupt or not a PyTorch checkpoint (neither a torch.save "
                         "archive nor a pickle)")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as error:
        if "weights_only" in str(error) or "Weights only" in str(error):
            raise ModelError(
                f"model file {path} holds pickled Python objects that can run code when loaded; "
                "load it only if you trust its source (--trust-model / 'trust this model')"
            ) from None
        raise ModelError(f"model file {path} is corrupt: {_short(error)}") from None
    except Exception as error:  # torch's unpicklers raise many types on damaged bytes
        raise ModelError(f"model file {path} is corrupt or not a PyTorch checkpoint: {_short(error)}") from None


def state_dict_of(checkpoint: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint, unwrapped from common containers and DDP prefixes."""
    if isinstance(checkpoint, dict):
        for key in STATE_DICT_KEYS:
            if isinstance(checkpoint.get(key), dict):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ModelError(f"model file {path} does not hold a state dict of tensors")
    return {key.removeprefix("module."): value for key, value in checkpoint.items()}


def load_weights(network: torch.nn.Module, weights: dict[str, torch.Tensor], path: Path) -> torch.nn.Module:
    try:
        network.load_state_dict(weights, strict=True)
    except RuntimeError as error:
        details = " ".join(str(error).split())[:400]
        raise ModelError(
            f"the weights in {path} do not match the network {type(network).__name__} named in its card: {details}"
        ) from None
    return network.eval()


def _short(error: Exception) -> str:
    return " ".join(str(error).split())[:300]
