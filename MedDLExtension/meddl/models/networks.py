"""Safe construction of networks and loading of weights (no arbitrary code unless trusted)."""

from __future__ import annotations

import pickle
import pickletools
import zipfile
from collections.abc import Sequence
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
    """torch.save writes a zip archive holding data.pkl (or, in the legacy format, pickles one after another,
    the first starting with 0x80)."""
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                return any(name == "data.pkl" or name.endswith("/data.pkl") for name in archive.namelist())
        except (zipfile.BadZipFile, OSError, ValueError):
            return False
    return starts_with_pickle(path)


def starts_with_pickle(path: Path, pickles: int = 1) -> bool:
    """True when the file begins with `pickles` whole, well-formed pickles (read opcode by opcode, nothing run)."""
    with open(path, "rb") as stream:
        if stream.read(1) != b"\x80":
            return False
        stream.seek(0)
        return all(_one_pickle(stream) for _ in range(pickles))


def _one_pickle(stream: Any, max_opcodes: int = 10_000_000) -> bool:
    try:
        for count, (opcode, _arg, _position) in enumerate(pickletools.genops(stream)):
            if opcode.name == "STOP":
                return True
            if count >= max_opcodes:
                return False
    except Exception:  # genops raises ValueError and others on bytes that are not a pickle
        return False
    return False


def _holds_a_pickle(path: Path) -> bool:
    """The checkpoint's main pickle is well formed: data.pkl of a torch.save archive, or the fourth pickle of
    the legacy format (magic number, protocol, system info, then the object)."""
    if not zipfile.is_zipfile(path):
        return starts_with_pickle(path, pickles=4)
    try:
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl"))
            with archive.open(name) as stream:
                return _one_pickle(stream)
    except Exception:  # no data.pkl, a damaged archive
        return False


def load_torchscript(path: Path) -> torch.nn.Module:
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as error:
        raise ModelError(f"model file {path} is corrupt or not a TorchScript model: {_short(error)}") from None
    return module.eval()


CODE_REFUSAL = "holds pickled Python objects that can run code when loaded"


def load_checkpoint(path: Path, trust: bool, allowed_globals: Sequence = (), refusal: str = CODE_REFUSAL) -> Any:
    """torch.load with weights_only=True (also accepting `allowed_globals`, the types a format is known to
    pickle); a pickle needing other code loads only when trusted, else ModelError "model file PATH `refusal`"."""
    if not looks_like_checkpoint(path):
        raise ModelError(f"model file {path} is corrupt or not a PyTorch model file (neither a torch.save "
                         "archive nor a pickle)")
    try:
        with torch.serialization.safe_globals(list(allowed_globals)):
            return torch.load(str(path), map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as error:
        if ("weights_only" in str(error) or "Weights only" in str(error)) and _holds_a_pickle(path):
            raise ModelError(
                f"model file {path} {refusal}; load it only if you trust its source (--trust-model / 'trust this "
                "model')"
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
