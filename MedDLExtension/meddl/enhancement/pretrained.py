"""Pretrained enhancement models (any format the model loader reads) and saving a self-trained denoiser as one.

The card's task is "enhancement" and its "enhancement" section says what the model does and
expects: {"kind": "denoise" | "superres", "modality": ..., "noise": ..., "factor": 4}. Denoisers
map a volume to a volume on the same grid; super-resolution models refine the cubic B-spline
interpolation onto the finer grid along the thickest axis. Intensities are z-scored in and scaled
back out ("zscore", the default) or passed as they are ("none").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..device import select_compute
from ..errors import ModelError
from ..image import Image
from ..models.loading import LoadedModel
from ..outputs import OutputSet
from ..progress import Progress, no_progress, scaled
from ..tasks import require_task
from . import KINDS
from .intensity import Scaling, checked_scalar_volume
from .superres import cubic_upsample, through_plane_axis, upsampled_image, upsampling_factor


def check_card(data: dict, source: str) -> None:
    """The card's "enhancement" section: {"kind": "denoise" | "superres", ...} (denoise when absent)."""
    section = data.get("enhancement", {})
    kind = section.get("kind", "denoise") if isinstance(section, dict) else None
    if kind not in KINDS:
        raise ModelError(f"{source}: enhancement kind must be 'denoise' or 'superres', not {kind!r}")


def enhancement_kind(model: LoadedModel) -> str:
    require_task(model.card, "enhancement")
    return model.card.raw.get("enhancement", {}).get("kind", "denoise")


def dry_run(loaded: LoadedModel) -> None:
    """Enhance a small blank volume on the CPU (the model library's check before it lists a model)."""
    shape = tuple(loaded.card.roi_size or (16, 16, 16))[::-1]
    if enhancement_kind(loaded) == "superres":  # a thick axis to upsample along
        shape = (max(4, shape[0] // 4), *shape[1:])
    blank = Image(np.zeros(shape, np.float32), spacing=(1.0, 1.0, 4.0 if shape[0] < shape[1] else 1.0))
    blank.array[..., : shape[-1] // 2] = 1.0  # not constant: enhancement refuses a constant volume
    enhance_with_model(blank, loaded, "cpu")


FLIPS = ((), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4))


def enhance_with_model(image: Image, model: LoadedModel, device: str = "auto",
                       progress: Optional[Progress] = None, flip_average: bool = False) -> Image:
    """Run a pretrained denoising or super-resolution model by sliding window; the input is not changed.

    `flip_average` averages the outputs for the 8 axis flips of the input (a denoiser's errors
    differ between flips, its anatomy does not: about +0.8 dB PSNR for 8 times the inference).
    """
    from ..inference.sliding_window import infer

    kind, card, report = enhancement_kind(model), model.card, progress or no_progress
    array = checked_scalar_volume(image)
    axis, factor = through_plane_axis(image), 1
    if kind == "superres":
        factor = upsampling_factor(image, model.card.raw["enhancement"].get("factor"))
        array = cubic_upsample(array, axis, factor)
    method = card.intensity.get("method", "zscore")
    if method not in ("zscore", "none"):
        raise ModelError(f"enhancement models take 'zscore' or 'none' intensities, not {method!r}")
    scaling = Scaling.of(array) if method == "zscore" else Scaling(0.0, 1.0)
    compute = select_compute(device)
    network = model.networks["network"].to(compute.device).eval()
    volume = torch.from_numpy(np.ascontiguousarray(scaling.forward(array).T))[None, None]  # (i, j, k)
    flips = FLIPS if flip_average else FLIPS[:1]
    result = sum(infer(network, volume.flip(axes), card.roi_size or (64, 64, 64), card.overlap, card.sw_batch_size,
                       compute, card.out_channels, scaled(report, n / len(flips), (n + 1) / len(flips)),
                       blend="gaussian", name=card.name).flip(axes)[0, 0] for n, axes in enumerate(flips)) / len(flips)
    enhanced = scaling.back(np.ascontiguousarray(result.float().cpu().numpy().T))
    return upsampled_image(image, enhanced, axis, factor) if factor > 1 else image.with_array(enhanced)


def denoiser_card(name: str, network_spec: dict, license_text: str, noise: str = "") -> dict:
    """The card of a denoiser trained by MedDL: z-scored intensities, Gaussian-blended 64^3 windows."""
    enhancement = {"kind": "denoise", **({"noise": noise} if noise else {})}
    return {"name": name, "task": "enhancement", "license": license_text,
            "input": {"channels": 1, "intensity": {"method": "zscore"}},
            "inference": {"roi_size": [64, 64, 64], "overlap": 0.5, "sw_batch_size": 4},
            "enhancement": enhancement, "network": network_spec}


def save_denoiser(network: torch.nn.Module, network_spec: dict, path: Path, noise_sigma: float,
                  description: str) -> Path:
    """The self-trained denoiser as a checkpoint with its card, for reuse on images with similar noise."""
    path = Path(path)
    card = denoiser_card(path.stem, network_spec, "trained by the user (see provenance)",
                         f"as in the training image: estimated sigma {noise_sigma:.4g} (intensity units)")
    card["provenance"] = f"meddl enhance, self-supervised (blind-spot) on {description}"
    with OutputSet() as outputs:  # the weights and their card appear together
        torch.save(network.state_dict(), outputs.staged(path))
        outputs.staged(path.with_suffix(".json")).write_text(json.dumps(card, indent=1))
        outputs.commit()
    return path
