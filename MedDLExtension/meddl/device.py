"""Choice of the compute device: CUDA, then Apple MPS, then CPU; mixed precision on CUDA only.

The choices are importable without torch (Slicer's panels and the command line list them); torch
loads when a device is resolved. On Apple GPUs an operation that MPS lacks runs on the CPU with
PyTorch's own warning naming it: `meddl/__init__.py` sets PYTORCH_ENABLE_MPS_FALLBACK before
torch is imported.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import DeviceError

if TYPE_CHECKING:
    import torch

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
        import torch

        free, _total = torch.cuda.mem_get_info(self.device)
        return int(free)


_said: set[str] = set()


def _say_once(message: str) -> None:
    if message not in _said:
        _said.add(message)
        print(f"meddl: {message}", file=sys.stderr)


def _mps_available() -> bool:
    import torch

    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def select_compute(name: str = "auto", amp: bool | None = None) -> Compute:
    """Resolve 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps' to an available device."""
    import torch

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
    if device.type == "mps":
        _say_once("running on the Apple GPU (mps); operations it lacks run on the CPU, each named in a "
                  "warning from PyTorch")
    return Compute(device, device.type == "cuda" if amp is None else amp and device.type == "cuda")
