"""The loaded-model object every format's loader produces and every task runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .card import ModelCard


@dataclass
class LoadedModel:
    """Networks ready for inference, with the card and the pipeline that runs them."""

    card: ModelCard
    networks: dict[str, torch.nn.Module]
    pipeline: dict[str, Any] = field(default_factory=lambda: {"type": "sliding-window"})
    source: str = ""
