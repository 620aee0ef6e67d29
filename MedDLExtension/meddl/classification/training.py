"""Training image classifiers (2D or 3D) from images and labels, written as a checkpoint with its card."""

from __future__ import annotations

import copy
import datetime
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..device import select_compute
from ..errors import InputError, OutputError
from ..image import Image
from ..models.card import card_from_dict
from ..models.networks import build_monai_network
from ..outputs import staged_folder
from ..progress import Progress, no_progress
from . import metrics
from .predict import prepare

ARCHITECTURES = ("densenet", "resnet", "efficientnet")


def network_spec(architecture: str, spatial_dims: int, channels: int, classes: int) -> tuple[dict, str]:
    """A small member of each MONAI family (for CPU-sized data) and its Grad-CAM target layer."""
    if architecture == "densenet":
        return {"class": "DenseNet", "args": {"spatial_dims": spatial_dims, "in_channels": channels,
                                               "out_channels": classes, "init_features": 16, "growth_rate": 8,
                                               "block_config": [2, 2, 2], "bn_size": 2}}, "class_layers.relu"
    if architecture == "resnet":
        return {"class": "ResNet", "args": {"block": "basic", "layers": [1, 1, 1, 1],
                                             "block_inplanes": [16, 32, 64, 128], "spatial_dims": spatial_dims,
                                             "n_input_channels": channels, "num_classes": classes}}, "layer4"
    if architecture == "efficientnet":
        return {"class": "EfficientNetBN", "args": {"model_name": "efficientnet-b0", "spatial_dims": spatial_dims,
                                                     "in_channels": channels, "num_classes": classes,
                                                     "pretrained": False}}, "_conv_head"
    raise InputError(f"unknown architecture {architecture!r}: choose one of {', '.join(ARCHITECTURES)}")


@dataclass
class TrainingSettings:
    architecture: str = "densenet"
    input_size: Optional[tuple[int, ...]] = None
    epochs: int = 30
    batch_size: int = 16
    learning_rate: float = 1e-3
    validation_fraction: float = 0.2
    folds: int = 0
    patience: int = 5
    augment: bool = True
    class_weights: bool = True
    seed: int = 0
    device: str = "auto"


@dataclass
class TrainingResult:
    folder: Path
    validation: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)


def _check(images: Sequence[Image], labels: Sequence[int], classes: Sequence[str]) -> None:
    if len(images) == 0:
        raise InputError("no training images")
    if len(images) != len(labels):
        raise InputError(f"{len(images)} images but {len(labels)} labels")
    unknown = sorted({int(label) for label in labels} - set(range(len(classes))))
    if unknown:
        raise InputError(f"label value(s) {unknown} have no class name (classes: {', '.join(classes)})")
    if len(set(int(label) for label in labels)) < 2:
        raise InputError("training needs examples of at least two classes")
    shapes = {image.shape for image in images}
    if len(shapes) > 1 and not images[0].channels:
        raise InputError("images differ in size: give an input size to resample them to")


def _augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random flips along each spatial axis, intensity scaling and a little noise."""
    for axis in range(2, batch.dim()):
        if torch.rand(1, generator=generator) < 0.5:
            batch = batch.flip(axis)
    scale = 1 + 0.1 * (torch.rand(batch.shape[0], *[1] * (batch.dim() - 1), generator=generator) - 0.5)
    return batch * scale + 0.02 * torch.randn(batch.shape, generator=generator)


def _fit(network, train_x, train_y, val_x, val_y, settings, weights, device, report) -> tuple[dict, list, dict]:
    """Train with early stopping on validation loss; returns the best state, history, best metrics."""
    optimiser = torch.optim.AdamW(network.parameters(), lr=settings.learning_rate)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights.to(device) if weights is not None else None)
    generator = torch.Generator().manual_seed(settings.seed)
    best, best_loss, stale, history = None, float("inf"), 0, []
    for epoch in range(settings.epochs):
        network.train()
        order = torch.randperm(len(train_x), generator=generator)
        for start in range(0, len(order), settings.batch_size):
            index = order[start:start + settings.batch_size]
            batch = _augment(train_x[index], generator) if settings.augment else train_x[index]
            optimiser.zero_grad()
            loss = loss_fn(network(batch.to(device)), train_y[index].to(device))
            loss.backward()
            optimiser.step()
        network.eval()
        with torch.no_grad():
            logits = torch.cat([network(val_x[i:i + 64].to(device)).float().cpu() for i in range(0, len(val_x), 64)])
        val_loss = float(torch.nn.functional.cross_entropy(logits, val_y))
        scores = metrics.summary(val_y.numpy(), torch.softmax(logits, 1).numpy())
        history.append({"epoch": epoch + 1, "train_loss": float(loss), "val_loss": val_loss,
                        "val_accuracy": scores["accuracy"], "val_roc_auc": scores["roc_auc"]})
        report((epoch + 1) / settings.epochs, f"epoch {epoch + 1}: validation loss {val_loss:.3f}")
        if val_loss < best_loss - 1e-4:
            best, best_loss, best_scores, stale = copy.deepcopy(network.state_dict()), val_loss, scores, 0
        else:
            stale += 1
            if stale >= settings.patience:
                break
    return best, history, best_scores


def _splits(count: int, settings: TrainingSettings, fixed: Optional[Sequence[str]]) -> list[tuple]:
    """(train indices, validation indices) pairs: the CSV's split column, k folds, or one held-out part."""
    if fixed is not None:
        train = [i for i, s in enumerate(fixed) if s != "val"]
        val = [i for i, s in enumerate(fixed) if s == "val"]
        if not val or not train:
            raise InputError("the split column needs both 'train' and 'val' rows")
        return [(train, val)]
    order = np.random.default_rng(settings.seed).permutation(count)
    if settings.folds and settings.folds > 1:
        parts = np.array_split(order, settings.folds)
        return [(np.concatenate(parts[:k] + parts[k + 1:]).tolist(), parts[k].tolist()) for k in range(settings.folds)]
    held = max(1, int(round(settings.validation_fraction * count)))
    return [(order[held:].tolist(), order[:held].tolist())]


def _make_card(images: Sequence[Image], classes: Sequence[str], name: str, settings: TrainingSettings) -> dict:
    """The card of the model to train: input size, intensity range from the data, network, classes."""
    spatial_dims = 2 if all(image.shape[0] == 1 for image in images) else 3
    size = settings.input_size or (images[0].shape[1:] if spatial_dims == 2 else images[0].shape)
    values = np.concatenate([image.array.ravel()[:: max(1, image.array.size // 20000)] for image in images])
    low, high = (float(v) for v in np.percentile(values, [0.5, 99.5]))
    network_def, target_layer = network_spec(settings.architecture, spatial_dims, images[0].channels, len(classes))
    return {"name": name, "task": "classification", "license": "trained by the user (see provenance)",
            "input": {"channels": images[0].channels, "spatial_dims": spatial_dims, "size": list(size),
                      "intensity": {"method": "range", "a_min": low, "a_max": high, "b_min": 0, "b_max": 1}},
            "labels": [{"value": i, "name": class_name} for i, class_name in enumerate(classes)],
            "network": network_def, "saliency": {"target_layer": target_layer}}


def _train_folds(x, y, card, settings, splits, report) -> tuple[list[dict], tuple]:
    """Train one model per split; returns every fold's scores and the best fold's (state, scores, history)."""

    counts = torch.bincount(y, minlength=len(card["labels"])).float()
    weights = counts.sum() / (len(counts) * counts.clamp(min=1)) if settings.class_weights else None
    device = select_compute(settings.device).device
    fold_count = max(1, settings.folds)
    folds, best = [], None
    for fold, (train, val) in enumerate(_splits(len(y), settings, splits)):
        network = build_monai_network(card["network"], "training").to(device)

        def fold_report(fraction: float, message: str, fold: int = fold) -> None:
            report((fold + fraction) / fold_count, message)

        state, history, scores = _fit(network, x[train], y[train], x[val], y[val], settings, weights, device,
                                      fold_report)
        folds.append({"fold": fold, **scores, "history": history})
        if best is None or scores["roc_auc"] > best[1]["roc_auc"]:
            best = (state, scores, history)
    return folds, best


def train_classifier(images: Sequence[Image], labels: Sequence[int], classes: Sequence[str], out: Path,
                     settings: Optional[TrainingSettings] = None, splits: Optional[Sequence[str]] = None,
                     progress: Optional[Progress] = None, data_description: str = "") -> TrainingResult:
    """Train, validate and write out/model.pt + out/model.json + out/metrics.json (whole or not at all)."""

    settings, out = settings or TrainingSettings(), Path(out)
    _check(images, labels, classes)
    if out.exists() and any(out.iterdir()):
        raise OutputError(f"output folder {out} is not empty")
    torch.manual_seed(settings.seed)
    card = _make_card(images, classes, out.name, settings)
    parsed = card_from_dict(card)
    x = torch.stack([prepare(image, parsed) for image in images])
    y = torch.as_tensor([int(label) for label in labels])
    folds, (state, scores, history) = _train_folds(x, y, card, settings, splits, progress or no_progress)
    validation = {key: float(np.mean([f[key] for f in folds])) for key in ("accuracy", "balanced_accuracy", "roc_auc")}
    validation["confusion_matrix"] = scores["confusion_matrix"]
    scheme = f"{len(folds)}-fold cross-validation" if len(folds) > 1 else "held-out validation"
    data = data_description or "the training data"
    card["accuracy"] = [{"metric": name, "value": round(validation[name], 4), "data": f"{scheme} of {data}"}
                        for name in ("roc_auc", "balanced_accuracy") if np.isfinite(validation[name])]
    card["provenance"] = (f"trained by meddl train-classifier on {datetime.date.today().isoformat()}: "
                          f"{settings.architecture}, {len(images)} images, {data}")
    _write(out, state, card, {"validation": validation, "folds": folds, "classes": list(classes)})
    return TrainingResult(out, validation, history)


def _write(out: Path, state: dict, card: dict, report: dict) -> None:
    with staged_folder(out) as staging:
        torch.save(state, staging / "model.pt")
        (staging / "model.json").write_text(json.dumps(card, indent=1))
        (staging / "metrics.json").write_text(json.dumps(report, indent=1))
        matrix = report["validation"]["confusion_matrix"]
        rows = ["true\\predicted," + ",".join(report["classes"])]
        rows += [f"{name}," + ",".join(str(v) for v in row) for name, row in zip(report["classes"], matrix)]
        (staging / "confusion_matrix.csv").write_text("\n".join(rows) + "\n")
