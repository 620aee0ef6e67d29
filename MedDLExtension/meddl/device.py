"""Choice of the compute device: CUDA, then Apple MPS, then CPU; mixed precision on CUDA only."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import DeviceError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


@dataclass(frozen=True)
class Compute:
    """Where a model runs and whether it uses automatic mixed precision."""

    device: torch.device
    amp: bool

    def free_memory_bytes(self) -> int | None:
        """Free memory on a CUDA device; None where it cannot be known."""
        if self.device.type != "cuda":
            return None
        free, _total = torch.cuda.mem_get_info(self.device)
        return int(free)


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def select_compute(name: str = "auto", amp: bool | None = None) -> Compute:
    """Resolve 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps' to an available device."""
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            device = torch.device("cuda")
        elif _mps_available():
            device = torch.device("mps")
        else:
            device = torch.device("cpu")
    elif name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError("CUDA was requested but no CUDA GPU is available to this PyTorch build")
        device = torch.device(name)
    elif name == "mps":
        if not _mps_available():
            raise DeviceError("MPS was requested but is not available on this machine")
        device = torch.device("mps")
    elif name == "cpu":
        device = torch.device("cpu")
    else:
        raise DeviceError(f"unknown device {name!r}: choose one of {', '.join(DEVICE_CHOICES)}")
    return Compute(device, device.type == "cuda" if amp is None else amp and device.type == "cuda")
