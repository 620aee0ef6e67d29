"""The loaded-model object every format's loader produces and every task runs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from ..errors import DeviceError, MeddlError, ModelError
from .card import ModelCard


@dataclass
class LoadedModel:
    """Networks ready for inference, with the card and the pipeline that runs them."""

    card: ModelCard
    networks: dict[str, torch.nn.Module]
    pipeline: dict[str, Any] = field(default_factory=lambda: {"type": "sliding-window"})
    source: str = ""


OUT_OF_MEMORY = ("out of memory", "can't allocate memory", "cannot allocate memory", "not enough memory")


def is_out_of_memory(error: BaseException) -> bool:
    """torch.OutOfMemoryError, MemoryError, or a backend's RuntimeError saying so (CPU, MPS)."""
    return isinstance(error, MemoryError) or (
        isinstance(error, RuntimeError) and any(text in str(error).lower() for text in OUT_OF_MEMORY))


def _detail(error: BaseException) -> str:
    """'RuntimeError: what went wrong', one line; for TorchScript, the error raised inside the scripted code."""
    text = str(error)
    if "TorchScript" in text:  # 'The following operation failed in the TorchScript interpreter. Traceback ...'
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        text = (lines[-1] if lines else text).replace("builtins.", "", 1)
    else:
        text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return " ".join(text.split())[:300]


def _named(name: str) -> str:
    return f"model {name!r}" if name else "the model"


@contextlib.contextmanager
def network_failures(name: str = "") -> Iterator[None]:
    """Around every call of a model's networks: what a network raises becomes one ModelError line ("model X
    failed on this input: ..."), running out of memory a DeviceError that says so; MedDL's own errors pass."""
    try:
        yield
    except MeddlError:
        raise
    except Exception as error:
        detail = _detail(error)
        if is_out_of_memory(error):
            raise DeviceError(f"out of memory running {_named(name)} ({detail}): try --device cpu, a smaller "
                              "image, or a card with a smaller roi_size or sw_batch_size") from None
        raise ModelError(f"{_named(name)} failed on this input: {detail}") from None


def checked_output(output: Any, name: str, batch: int, channels: Optional[int],
                   spatial: Optional[Sequence[int]]) -> torch.Tensor:
    """A network's output, refused unless it is a (batch, channels, *spatial) tensor (None: any size)."""
    if not isinstance(output, torch.Tensor):
        raise ModelError(f"{_named(name)} returned {type(output).__name__}, not a tensor")
    expected = (batch, channels if channels is not None else "C", *(spatial if spatial is not None else ()))
    if spatial is not None and output.dim() != len(expected) or output.dim() < 2 or output.shape[0] != batch:
        raise ModelError(f"{_named(name)} returned an output of shape {tuple(output.shape)} where "
                         f"{tuple(expected)} was expected")
    if channels is not None and output.shape[1] != channels:
        raise ModelError(f"{_named(name)} produced {output.shape[1]} output channel(s) but would need {channels} "
                         "to match its card")
    if spatial is not None and tuple(output.shape[2:]) != tuple(spatial):
        raise ModelError(f"{_named(name)} returned an output of shape {tuple(output.shape)} where "
                         f"{tuple(expected)} was expected (the same grid as its input)")
    return output
