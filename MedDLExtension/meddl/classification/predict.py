"""The classification task: images in, class probabilities (and optional Grad-CAM saliency) out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..device import select_compute
from ..errors import InputError, ModelError
from ..image import Image, blank_image, check_volume
from ..models.card import ModelCard
from ..models.loaded import checked_output, network_failures
from ..models.loading import LoadedModel, load_model
from ..progress import Progress, no_progress, scaled
from ..tasks import require_task


@dataclass(frozen=True)
class Classification:
    """One input's result: class probabilities in card order, and the predicted class."""

    source: str
    probabilities: tuple[float, ...]
    card: ModelCard

    @property
    def predicted(self) -> str:
        return self.card.labels[int(np.argmax(self.probabilities))].name

    def as_row(self) -> dict:
        row = {"input": self.source, "predicted": self.predicted, "model": self.card.name}
        row.update({f"p_{label.name}": round(p, 6) for label, p in zip(self.card.labels, self.probabilities)})
        return row


def classifier_model(model: str | Path | LoadedModel, trust: bool = False) -> LoadedModel:
    loaded = model if isinstance(model, LoadedModel) else load_model(model, trust=trust)
    require_task(loaded.card, "classification")
    return loaded


def resize_spatial(tensor: torch.Tensor, size: tuple[int, ...], spatial_dims: int) -> torch.Tensor:
    """Resize the spatial axes of a (C, [D,] H, W) tensor: bilinear in 2D, trilinear in 3D."""
    from ..inference.preprocess import resize

    if spatial_dims == 3:
        return resize(tensor, size, "trilinear")
    return torch.nn.functional.interpolate(tensor[None], size=size, mode="bilinear", align_corners=False)[0]


def prepare(image: Image, card: ModelCard) -> torch.Tensor:
    """Image -> (C, [D,] H, W) float tensor at the card's input size, normalised per channel."""
    from ..inference.preprocess import finite, normalise

    check_volume(image, channels=card.channels)
    array = image.array.astype(np.float32, copy=False)
    channels = np.moveaxis(array, -1, 0) if array.ndim == 4 else array[None]  # (C, K, J, I)
    tensor = torch.stack([normalise(finite(torch.from_numpy(np.ascontiguousarray(c))), card.intensity)
                          for c in channels])
    if card.spatial_dims == 2:
        if tensor.shape[1] != 1:
            raise InputError(f"the 2D classifier {card.name} needs a single-slice image, not {tensor.shape[1]} slices")
        tensor = tensor[:, 0]
    return resize_spatial(tensor, card.input_size, card.spatial_dims) if card.input_size else tensor


def classify(images: Sequence[Image], model: str | Path | LoadedModel, device: str = "auto",
             sources: Optional[Sequence[str]] = None, batch_size: int = 4, progress: Optional[Progress] = None,
             trust_model: bool = False) -> list[Classification]:
    """Classify images in batches; probabilities are the softmax of the network's output."""
    report = progress or no_progress
    loaded = classifier_model(model, trust_model)
    compute = select_compute(device)
    sources = list(sources or [f"image {i + 1}" for i in range(len(images))])
    if loaded.pipeline.get("type") == "monai-bundle":  # the bundle's own workflow, one image at a time
        from ..segmentation.bundle_run import bundle_probabilities

        results = []
        for index, image in enumerate(images):
            part = scaled(report, index / len(images), (index + 1) / len(images))
            results.append(Classification(sources[index], bundle_probabilities(loaded, image, compute, part),
                                          loaded.card))
        return results
    network = loaded.networks["network"].to(compute.device).eval()
    card, results = loaded.card, []
    for start in range(0, len(images), batch_size):
        batch = torch.stack([prepare(image, card) for image in images[start:start + batch_size]])
        with torch.inference_mode(), network_failures(card.name):
            logits = checked_output(network(batch.to(compute.device)), card.name, len(batch), None, None).float()
        if logits.ndim != 2 or logits.shape[1] != len(card.labels):
            raise ModelError(f"the model produced output of shape {tuple(logits.shape)} but its card lists "
                             f"{len(card.labels)} classes")
        for index, row in enumerate(torch.softmax(logits, dim=1).cpu().numpy()):
            results.append(Classification(sources[start + index], tuple(float(p) for p in row), card))
        report(min(1.0, (start + batch_size) / len(images)), f"classified {len(results)}/{len(images)}")
    return results


def saliency(image: Image, model: str | Path | LoadedModel, class_name: Optional[str] = None,
             device: str = "auto", trust_model: bool = False) -> Image:
    """Grad-CAM map for one class (the predicted one by default), on the input image's grid."""
    from monai.visualize import GradCAM

    loaded = classifier_model(model, trust_model)
    card = loaded.card
    if loaded.pipeline.get("type") == "monai-bundle":
        raise ModelError(f"{card.name} runs through its MONAI bundle workflow, which gives no saliency maps")
    if not card.saliency_layer:
        raise ModelError(f"the card of {card.name} names no saliency target layer ('saliency.target_layer')")
    names = [label.name for label in card.labels]
    if class_name is not None and class_name not in names:
        raise InputError(f"class {class_name!r} is not one of {', '.join(names)}")
    compute = select_compute(device)
    network = loaded.networks["network"].to(compute.device).eval()
    tensor = prepare(image, card)[None].to(compute.device)
    cam = GradCAM(nn_module=network, target_layers=card.saliency_layer)
    index = names.index(class_name) if class_name else None
    with torch.enable_grad(), network_failures(card.name):
        heat = cam(x=tensor, class_idx=index).detach().float()[0]  # (1, [D,] H, W), normalised to 0..1
    spatial = image.shape if card.spatial_dims == 3 else image.shape[1:]
    heat = resize_spatial(heat, spatial, card.spatial_dims)
    array = heat[0].cpu().numpy().reshape(image.shape).astype(np.float32)
    return image.with_array(array)


def dry_run(loaded: LoadedModel) -> None:
    """Classify one blank image of the card's input size on the CPU (the model library's check)."""
    card = loaded.card
    size = tuple(card.input_size or (32,) * card.spatial_dims)
    shape = (1, *size) if card.spatial_dims == 2 else size
    classify([blank_image(shape, card.channels)], loaded, "cpu")
