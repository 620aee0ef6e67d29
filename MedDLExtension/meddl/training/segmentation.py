"""Training segmentation networks from image/label pairs, written as a MONAI bundle with its card.

Patches are sampled from the training pairs (half of them centred on labelled voxels), the loss is
MONAI's Dice + cross-entropy, and validation runs the very inference path users run (sliding window
on whole volumes), so the Dice written into the card is the Dice the bundle reproduces.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..errors import InputError, OutputError
from ..image import Image
from ..models.card import card_from_dict
from ..models.loading import LoadedModel, load_model
from ..models.networks import build_monai_network, load_weights
from ..progress import Progress, no_progress
from .bundle_writer import write_bundle


@dataclass
class SegmentationTrainingSettings:
    patch_size: tuple[int, int, int] = (48, 48, 48)
    epochs: int = 20
    steps_per_epoch: int = 20
    time_budget_s: Optional[float] = None
    batch_size: int = 2
    learning_rate: float = 2e-3
    channels: tuple[int, ...] = (16, 32, 64, 128)
    seed: int = 0
    device: str = "auto"
    init_from: Optional[str] = None  # a bundle or model to fine-tune


@dataclass
class SegmentationTrainingResult:
    folder: Path
    validation_dice: dict[str, float]
    history: list[dict] = field(default_factory=list)


def check_pairs(pairs: Sequence[tuple[Image, Image]], labels: dict[int, str]) -> None:
    """Refuse bad training input before any training starts."""
    if not pairs:
        raise InputError("no training pairs: give at least one image with its label map")
    for index, (image, label) in enumerate(pairs):
        if not image.same_grid(label):
            raise InputError(f"pair {index + 1}: the label map is not on the image's grid "
                             f"(shapes {image.shape} and {label.shape}); resample it first")
        values = set(np.unique(label.array).astype(int).tolist()) - {0}
        if not values:
            raise InputError(f"pair {index + 1}: the label map is empty")
        unknown = sorted(values - set(labels))
        if unknown:
            raise InputError(f"pair {index + 1}: label value(s) {unknown} are not named in the label list "
                             f"({', '.join(f'{k}={v}' for k, v in sorted(labels.items()))})")


def _card(labels: dict[int, str], settings: SegmentationTrainingSettings, name: str) -> dict:
    out_channels = max(labels) + 1
    network = {"class": "UNet", "args": {"spatial_dims": 3, "in_channels": 1, "out_channels": out_channels,
                                          "channels": list(settings.channels),
                                          "strides": [2] * (len(settings.channels) - 1), "num_res_units": 1}}
    return {"name": name, "task": "segmentation", "license": "trained by the user (see provenance)",
            "input": {"channels": 1, "intensity": {"method": "zscore"}},
            "inference": {"roi_size": list(settings.patch_size), "overlap": 0.25, "sw_batch_size": 2},
            "output": {"mode": "argmax"},
            "labels": [{"value": value, "name": text} for value, text in sorted(labels.items())], "network": network}


def _volumes(pairs, card) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Whole volumes normalised as inference will normalise them, in the engine's (i, j, k) order."""
    from ..inference.preprocess import finite, normalise

    prepared = []
    for image, label in pairs:
        array = np.ascontiguousarray(image.array.T, dtype=np.float32)
        x = normalise(finite(torch.from_numpy(array)), card["input"]["intensity"])
        y = torch.from_numpy(np.ascontiguousarray(label.array.T).astype(np.int64))
        prepared.append((x, y))
    return prepared


def _sample(volumes, patch: tuple[int, ...], count: int, generator: torch.Generator):
    """`count` random patches; half centred on a labelled voxel."""
    xs, ys = [], []
    for n in range(count):
        x, y = volumes[int(torch.randint(len(volumes), (1,), generator=generator))]
        size = torch.tensor(x.shape)
        half = torch.tensor(patch) // 2
        if n % 2 == 0:
            foreground = torch.nonzero(y > 0)
            centre = foreground[int(torch.randint(len(foreground), (1,), generator=generator))]
        else:
            centre = (torch.rand(3, generator=generator) * size).long()
        start = torch.clamp(centre - half, min=0)
        start = torch.minimum(start, torch.clamp(size - torch.tensor(patch), min=0))
        box = tuple(slice(int(s), int(s) + p) for s, p in zip(start, patch))
        xs.append(_pad(x[box], patch))
        ys.append(_pad(y[box], patch))
    return torch.stack(xs)[:, None], torch.stack(ys)[:, None]


def _pad(t: torch.Tensor, patch: tuple[int, ...]) -> torch.Tensor:
    pads = [p for size, target in zip(reversed(t.shape), reversed(patch)) for p in (0, target - size)]
    return torch.nn.functional.pad(t, pads)


def validation_dice(model: LoadedModel, pairs, labels: dict[int, str]) -> dict[str, float]:
    """Per-label Dice of the real inference path on whole validation volumes."""
    from ..sample_data import dice
    from ..segment import segment

    scores: dict[str, list[float]] = {name: [] for name in labels.values()}
    for image, label in pairs:
        predicted = segment(image, model, device="cpu").labels.array
        for value, name in labels.items():
            scores[name].append(dice(predicted == value, label.array == value))
    return {name: float(np.mean(values)) for name, values in scores.items()}


def train_segmentation(pairs: Sequence[tuple[Image, Image]], labels: dict[int, str], out: Path,
                       settings: Optional[SegmentationTrainingSettings] = None,
                       validation: Optional[Sequence[tuple[Image, Image]]] = None,
                       progress: Optional[Progress] = None, data_description: str = "") -> SegmentationTrainingResult:
    """Train (or fine-tune) a UNet and write a MONAI bundle to `out` (whole or not at all)."""
    from monai.losses import DiceCELoss

    from ..device import select_compute

    settings, report, out = settings or SegmentationTrainingSettings(), progress or no_progress, Path(out)
    check_pairs(pairs, labels)
    if validation:
        check_pairs(validation, labels)
    if out.exists() and any(out.iterdir()):
        raise OutputError(f"output folder {out} is not empty")
    torch.manual_seed(settings.seed)
    card = _card(labels, settings, out.name)
    network = build_monai_network(card["network"], "training")
    if settings.init_from:
        start = load_model(settings.init_from).networks["network"].state_dict()
        network = load_weights(network, start, Path(settings.init_from))
    device = select_compute(settings.device).device
    network.to(device)
    optimiser = torch.optim.AdamW(network.parameters(), lr=settings.learning_rate)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    volumes, generator = _volumes(pairs, card), torch.Generator().manual_seed(settings.seed)
    history, started = [], time.monotonic()
    for epoch in range(settings.epochs):
        network.train()
        for _ in range(settings.steps_per_epoch):
            x, y = _sample(volumes, settings.patch_size, settings.batch_size, generator)
            optimiser.zero_grad()
            loss = loss_fn(network(x.to(device)), y.to(device))
            loss.backward()
            optimiser.step()
        history.append({"epoch": epoch + 1, "loss": float(loss)})
        elapsed = time.monotonic() - started
        report((epoch + 1) / settings.epochs, f"epoch {epoch + 1}: loss {float(loss):.3f}")
        if settings.time_budget_s and elapsed > settings.time_budget_s:
            break
    network.eval().cpu()
    model = LoadedModel(card_from_dict(card), {"network": network})
    scores = validation_dice(model, validation, labels) if validation else {}
    card["accuracy"] = [{"metric": f"Dice {name}", "value": round(value, 4),
                         "data": f"validation on {len(validation)} held-out volume(s) of {data_description}"}
                        for name, value in scores.items()]
    card["provenance"] = f"meddl train: {len(pairs)} training pair(s) of {data_description}; {len(history)} epochs"
    write_bundle(out, network, card)
    return SegmentationTrainingResult(out, scores, history)
