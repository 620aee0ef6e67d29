"""MONAI sliding-window inference with progress, mixed precision and memory-aware placement."""

from __future__ import annotations

import contextlib
import math

import torch

from ..device import Compute
from ..errors import DeviceError, ModelError
from ..models.card import MAX_VOXELS
from ..models.loaded import checked_output, network_failures
from ..progress import Progress, no_progress

# Keep the aggregated output on the GPU only while it needs less than this share of free memory.
OUTPUT_SHARE_OF_FREE_MEMORY = 0.4


def window_count(shape: tuple[int, ...], roi: tuple[int, ...], overlap: float) -> int:
    """Number of windows MONAI's sliding window visits (same scan interval rule)."""
    count = 1
    for size, window in zip(shape, roi):
        if window >= size:
            continue
        interval = max(int(window * (1 - overlap)), 1)
        count *= math.ceil((size - window) / interval) + 1
    return count


def output_device(compute: Compute, volume_voxels: int, out_channels: int) -> torch.device:
    """Aggregate on the compute device unless that would crowd its free memory; then on CPU."""
    free = compute.free_memory_bytes()
    if free is None:
        return compute.device
    needed = 2 * 4 * volume_voxels * max(out_channels, 1)  # output plus count map, float32
    return compute.device if needed < OUTPUT_SHARE_OF_FREE_MEMORY * free else torch.device("cpu")


def autocast(compute: Compute, network: torch.nn.Module):
    """Mixed precision on CUDA for eager networks; TorchScript graphs run as compiled."""
    if compute.amp and not isinstance(network, torch.jit.ScriptModule):
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def infer(network: torch.nn.Module, volume: torch.Tensor, roi: tuple[int, ...], overlap: float,
          sw_batch_size: int, compute: Compute, out_channels: int, progress: Progress | None = None,
          blend: str = "constant", name: str = "") -> torch.Tensor:
    """Run `network` over a (1, C, X, Y, Z) CPU or device tensor; returns (1, K, X, Y, Z) outputs.

    `blend` is MONAI's window weighting: "constant" for logits, "gaussian" for images (no seams). Every
    window's output must be (windows, out_channels, *roi); a network that raises or returns anything else is a
    ModelError naming model `name`, running out of memory (after the retry on CPU) a DeviceError.
    """
    from monai.inferers import sliding_window_inference  # imported here: MONAI takes ~2 s to import

    report = progress or no_progress
    total = max(1, math.ceil(window_count(tuple(volume.shape[2:]), roi, overlap) / sw_batch_size))
    done = 0

    def predictor(windows: torch.Tensor) -> torch.Tensor:
        nonlocal done
        result = checked_output(network(windows), name, windows.shape[0], out_channels, windows.shape[2:])
        done += 1
        report(done / total, f"window batch {done}/{total}")
        return result

    padded = math.prod(max(size, window) for size, window in zip(volume.shape[2:], roi))
    if padded > MAX_VOXELS:  # MONAI pads the volume to at least one window before it allocates anything
        raise ModelError(f"model {name!r}: windows of {tuple(roi)} voxels over a {tuple(volume.shape[2:])} volume "
                         f"would need a grid of {padded} voxels, more than {MAX_VOXELS}")
    target = output_device(compute, int(volume[0, 0].numel()), out_channels)
    source = volume.to(target)
    with network_failures(name):
        try:
            with torch.inference_mode(), autocast(compute, network):
                return sliding_window_inference(source, roi, sw_batch_size, predictor, overlap=overlap, mode=blend,
                                                sw_device=compute.device, device=target)
        except torch.cuda.OutOfMemoryError:
            if target.type == "cpu" and sw_batch_size == 1:
                raise DeviceError("out of GPU memory even for one window: choose a smaller roi or --device cpu") \
                    from None
            torch.cuda.empty_cache()
            done = 0
            with torch.inference_mode(), autocast(compute, network):
                return sliding_window_inference(volume.cpu(), roi, 1, predictor, overlap=overlap, mode=blend,
                                                sw_device=compute.device, device=torch.device("cpu"))
