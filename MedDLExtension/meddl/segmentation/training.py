"""Training segmentation networks from image/label pairs, written as a MONAI bundle with its card.

Patches are sampled from the training pairs (half of them centred on labelled voxels), the loss is
MONAI's Dice + cross-entropy, and validation runs the very inference path users run (sliding window
on whole volumes), so the Dice written into the card is the Dice the bundle reproduces.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..device import select_compute
from ..distributed import distributed_context
from ..errors import InputError, OutputError
from ..image import Image
from ..inference.preprocess import finite, normalise
from ..models.card import card_from_dict
from ..models.loading import LoadedModel, load_model
from ..models.networks import build_monai_network, load_weights
from ..progress import Progress, no_progress, report_metrics
from .bundle_writer import write_bundle
from .metrics import dice
from .patches import PatchDataset, sparse_axis
from .predict import segment


@dataclass
class SegmentationTrainingSettings:
    patch_size: Optional[tuple[int, int, int]] = None  # (i, j, k); None: chosen from the data's size and spacing
    slice_patch: int = 96  # in-plane size of the one-slice patches used for sparse (few-shot) labels
    few_shot: str = "auto"  # "auto": train slice by slice on the labelled slices when labels are sparse; "off"
    epochs: int = 20
    steps_per_epoch: int = 20
    time_budget_s: Optional[float] = None
    batch_size: int = 2
    learning_rate: float = 2e-3
    channels: tuple[int, ...] = (16, 32, 64, 128)
    validate_every: int = 5  # epochs between validations; the best validated weights are kept
    seed: int = 0
    device: str = "auto"
    init_from: Optional[str] = None  # a bundle or model to fine-tune


@dataclass
class SegmentationTrainingResult:
    folder: Path
    validation_dice: dict[str, float]
    history: list[dict] = field(default_factory=list)
    slice_axis: Optional[int] = None


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


def choose_slice_axis(pairs: Sequence[tuple[Image, Image]], few_shot: str) -> Optional[int]:
    """The (i, j, k) axis to train slice by slice along, when some pair has only a few labelled slices."""
    if few_shot == "off":
        return None
    axes = [sparse_axis(label.array.T) for _, label in pairs]
    return next((axis for axis in axes if axis is not None), None)


PATCH_EXTENT_MM = 64.0  # a default patch covers about this much along each axis


def default_patch_size(images: Sequence[Image], levels: int) -> tuple[int, int, int]:
    """(i, j, k) patch: about 64 mm on each axis (fewer voxels along thick slices), a multiple of
    2**levels, at least 16 voxels, and no larger than the smallest volume needs."""
    multiple = 2**levels
    spacing = np.min([image.spacing for image in images], axis=0)
    smallest = np.min([image.shape[::-1] for image in images], axis=0)
    patch = []
    for axis in range(3):
        wanted = min(PATCH_EXTENT_MM / spacing[axis], 96, int(np.ceil(smallest[axis] / multiple)) * multiple)
        patch.append(max(16, int(round(wanted / multiple)) * multiple))
    return tuple(patch)


def _card(labels: dict[int, str], settings: SegmentationTrainingSettings, name: str,
          slice_axis: Optional[int]) -> dict:
    out_channels = max(labels) + 1
    levels = len(settings.channels) - 1
    if slice_axis is None:
        roi, strides, sw_batch = list(settings.patch_size), [2] * levels, 2
    else:  # one slice thick: the network never pools (nor looks) across slices
        roi = [1 if axis == slice_axis else settings.slice_patch for axis in range(3)]
        strides = [[1 if axis == slice_axis else 2 for axis in range(3)]] * levels
        sw_batch = 16
    network = {"class": "UNet", "args": {"spatial_dims": 3, "in_channels": 1, "out_channels": out_channels,
                                          "channels": list(settings.channels), "strides": strides,
                                          "num_res_units": 1}}
    return {"name": name, "task": "segmentation", "license": "trained by the user (see provenance)",
            "input": {"channels": 1, "intensity": {"method": "zscore"}},
            "inference": {"roi_size": roi, "overlap": 0.25, "sw_batch_size": sw_batch},
            "output": {"mode": "argmax"},
            "labels": [{"value": value, "name": text} for value, text in sorted(labels.items())], "network": network}


def prepare_volumes(pairs, card) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Whole volumes normalised as inference will normalise them, in the engine's (i, j, k) order."""

    prepared = []
    for image, label in pairs:
        array = np.ascontiguousarray(image.array.T, dtype=np.float32)
        x = normalise(finite(torch.from_numpy(array)), card["input"]["intensity"])
        y = torch.from_numpy(np.ascontiguousarray(label.array.T).astype(np.int64))
        prepared.append((x, y))
    return prepared


def validation_dice(model: LoadedModel, pairs, labels: dict[int, str], device: str = "cpu") -> dict[str, float]:
    """Per-label Dice of the real inference path on whole validation volumes."""

    scores: dict[str, list[float]] = {name: [] for name in labels.values()}
    for image, label in pairs:
        predicted = segment(image, model, device=device).labels.array
        for value, name in labels.items():
            scores[name].append(dice(predicted == value, label.array == value))
    return {name: float(np.mean(values)) for name, values in scores.items()}


def train_segmentation(pairs: Sequence[tuple[Image, Image]], labels: dict[int, str], out: Path,
                       settings: Optional[SegmentationTrainingSettings] = None,
                       validation: Optional[Sequence[tuple[Image, Image]]] = None,
                       progress: Optional[Progress] = None, data_description: str = "",
                       install_record: Optional[dict] = None) -> SegmentationTrainingResult:
    """Train (or fine-tune) a UNet and write a MONAI bundle to `out`.

    The bundle is written whole each time validation improves (or after each epoch without
    validation data), so a run stopped at any moment leaves the best weights so far. Under
    torchrun every process trains on its share of each epoch; rank 0 validates and writes.
    """
    settings, out = settings or SegmentationTrainingSettings(), Path(out)
    check_pairs(pairs, labels)
    multiple = 2 ** (len(settings.channels) - 1)
    if settings.patch_size is None:
        settings = replace(settings, patch_size=default_patch_size([image for image, _ in pairs],
                                                                   len(settings.channels) - 1))
    elif any(size < 16 or size % multiple for size in settings.patch_size):
        raise InputError(f"the patch size {','.join(map(str, settings.patch_size))} must be at least 16 and a "
                         f"multiple of {multiple} on each axis (the network halves it {multiple.bit_length() - 1} "
                         "times)")
    if validation:
        check_pairs(validation, labels)
    if out.exists() and any(out.iterdir()):
        raise OutputError(f"output folder {out} is not empty")
    trainer = SegmentationTrainer(pairs, labels, out, settings, validation, progress or no_progress,
                                  data_description, install_record)
    return trainer.run()


class SegmentationTrainer:
    """One training run: the network, its patches, the epoch loop and the best checkpoint."""

    def __init__(self, pairs, labels: dict[int, str], out: Path, settings: SegmentationTrainingSettings,
                 validation, report: Progress, data_description: str, install_record: Optional[dict]) -> None:

        self.labels, self.out, self.settings, self.validation = labels, out, settings, validation
        self.report, self.description, self.install_record = report, data_description, install_record
        self.pair_count = len(pairs)
        self.slice_axis = choose_slice_axis(pairs, settings.few_shot)
        self.card = _card(labels, settings, out.name, self.slice_axis)
        torch.manual_seed(settings.seed)
        self.network = build_monai_network(self.card["network"], "training")
        if settings.init_from:
            start = load_model(settings.init_from).networks["network"].state_dict()
            self.network = load_weights(self.network, start, Path(settings.init_from))
        compute = select_compute(settings.device)
        self.context = distributed_context(compute.device.type)
        self.device = self.context.device(compute.device)
        self.model = self.context.wrap(self.network.to(self.device), self.device)
        length = settings.steps_per_epoch * settings.batch_size * self.context.world_size
        self.dataset = PatchDataset(prepare_volumes(pairs, self.card), tuple(self.card["inference"]["roi_size"]),
                                    length, settings.seed, self.slice_axis)
        self.optimiser = torch.optim.AdamW(self.network.parameters(), lr=settings.learning_rate)

    def run(self) -> SegmentationTrainingResult:
        from monai.losses import DiceCELoss

        settings, started = self.settings, time.monotonic()
        sampler = self.context.sampler(self.dataset, settings.seed)
        loader = torch.utils.data.DataLoader(self.dataset, settings.batch_size, sampler=sampler, drop_last=True)
        loss_fn, history, best, best_scores = DiceCELoss(to_onehot_y=True, softmax=True), [], -1.0, {}
        for epoch in range(1, settings.epochs + 1):
            self.dataset.set_epoch(epoch)
            if sampler is not None:
                sampler.set_epoch(epoch)
            loss, stop = self._epoch(loader, loss_fn, started)
            entry = {"epoch": epoch, "loss": round(loss, 5)}
            if self.context.is_main:
                last = stop or epoch == settings.epochs
                if not self.validation:
                    self._save({}, epoch)
                elif epoch % settings.validate_every == 0 or last:
                    scores = self._validate()
                    entry["dice"] = round(float(np.mean(list(scores.values()))), 5)
                    if entry["dice"] > best:
                        best, best_scores = entry["dice"], scores
                        self._save(scores, epoch)
                history.append(entry)
                fraction = max(epoch / settings.epochs, (time.monotonic() - started) / (settings.time_budget_s or 1e30))
                report_metrics(self.report, min(fraction, 1.0), _summary(entry), entry)
            if stop:
                break
        self.model = self.network  # drop the DDP wrapper: its reducer holds the process group that close() destroys
        self.context.close()
        return SegmentationTrainingResult(self.out, best_scores, history, self.slice_axis)

    def _epoch(self, loader, loss_fn, started: float) -> tuple[float, bool]:
        """One pass over this process's share of the epoch; stops early when the time budget is spent."""
        self.model.train()
        losses, budget = [], self.settings.time_budget_s
        for x, y in loader:
            self.optimiser.zero_grad()
            loss = loss_fn(self.model(x.to(self.device)), y.to(self.device))
            loss.backward()
            self.optimiser.step()
            losses.append(loss.item())
            if self.context.agree(bool(budget) and time.monotonic() - started > budget):
                return self.context.mean(float(np.mean(losses))), True
        return self.context.mean(float(np.mean(losses))), False

    def _validate(self) -> dict[str, float]:
        model = LoadedModel(card_from_dict(self.card), {"network": self.network})
        try:
            return validation_dice(model, self.validation, self.labels, str(self.device))
        finally:
            self.network.to(self.device).train()

    def _save(self, scores: dict[str, float], epoch: int) -> None:
        """Write the bundle whole, replacing the previous checkpoint."""
        card = dict(self.card)
        card["accuracy"] = [{"metric": f"Dice {name}", "value": round(value, 4),
                             "data": f"validation on {len(self.validation)} held-out volume(s) of {self.description}"}
                            for name, value in scores.items()]
        mode = f"slice by slice along axis {self.slice_axis} (labelled slices only)" \
            if self.slice_axis is not None else "3D patches"
        card["provenance"] = (f"meddl train: {self.pair_count} training pair(s) of {self.description}; "
                              f"{mode}; weights of epoch {epoch} of at most {self.settings.epochs}")
        write_bundle(self.out, self.network, card, replace=True, record=self.install_record)


def _summary(entry: dict) -> str:
    dice = f", validation Dice {entry['dice']:.3f}" if "dice" in entry else ""
    return f"epoch {entry['epoch']}: loss {entry['loss']:.3f}{dice}"
