"""Intensity normalisation and grid resizing from a model card, in torch (CPU or GPU)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def finite(tensor: torch.Tensor) -> torch.Tensor:
    """Replace NaN by 0 and +-Inf by the finite extremes, so one bad voxel cannot poison a window."""
    is_finite = torch.isfinite(tensor)
    if bool(is_finite.all()):
        return tensor
    values = tensor[is_finite]
    if values.numel() == 0:
        return torch.zeros_like(tensor)
    return torch.nan_to_num(tensor, nan=0.0, posinf=float(values.max()), neginf=float(values.min()))


def quantile_range(tensor: torch.Tensor, low: float, high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Intensity quantiles; subsampled above torch.quantile's size limit."""
    flat = tensor.reshape(-1).float()
    if flat.numel() > 8_000_000:
        flat = flat[:: flat.numel() // 8_000_000 + 1]
    return torch.quantile(flat, low), torch.quantile(flat, high)


def quantile_zscore(tensor: torch.Tensor, low: torch.Tensor, high: torch.Tensor, scale: float,
                    shift: float) -> torch.Tensor:
    """Map [low, high] to [0, 1], clip, standardise, then scale and shift."""
    unit = ((tensor - low) / torch.clamp(high - low, min=1e-8)).clamp(0.0, 1.0)
    return scale * (unit - unit.mean()) / torch.clamp(unit.std(), min=1e-8) + shift


def normalise(tensor: torch.Tensor, spec: dict[str, Any]) -> torch.Tensor:
    """Apply a card's intensity normalisation to one channel."""
    method = spec.get("method", "none")
    if method == "zscore":
        return (tensor - tensor.mean()) / torch.clamp(tensor.std(), min=1e-8)
    if method == "range":
        a_min, a_max = float(spec["a_min"]), float(spec["a_max"])
        b_min, b_max = float(spec.get("b_min", 0.0)), float(spec.get("b_max", 1.0))
        scaled = (tensor - a_min) / (a_max - a_min) * (b_max - b_min) + b_min
        return scaled.clamp(min(b_min, b_max), max(b_min, b_max)) if spec.get("clip", False) else scaled
    if method == "quantile_zscore":
        low, high = quantile_range(tensor, float(spec.get("low", 0.005)), float(spec.get("high", 0.995)))
        return quantile_zscore(tensor, low, high, float(spec.get("scale", 1.0)), float(spec.get("shift", 0.0)))
    return tensor


def resize(tensor: torch.Tensor, shape: tuple[int, ...], mode: str) -> torch.Tensor:
    """Resize the last three axes of a 3D, 4D (C, ...) or 5D (N, C, ...) tensor."""
    if tuple(tensor.shape[-3:]) == tuple(shape):
        return tensor
    batched = tensor.reshape((-1, 1, *tensor.shape[-3:])) if tensor.dim() == 3 else tensor
    batched = batched[None] if batched.dim() == 4 else batched
    align = {"align_corners": False} if mode in ("trilinear",) else {}
    resized = F.interpolate(batched.float(), size=tuple(shape), mode=mode, **align)
    return resized.reshape((*tensor.shape[:-3], *shape))


def shape_for_spacing(shape: tuple[int, ...], spacing: tuple[float, ...], target: tuple[float, ...]) -> tuple:
    """Grid shape that covers the same extent at the target spacing."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target))
