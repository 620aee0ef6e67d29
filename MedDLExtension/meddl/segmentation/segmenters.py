"""The pipelines that turn an image into a label map, chosen by the model entry's pipeline type.

* sliding-window: card-driven preprocessing, MONAI sliding-window inference, argmax/threshold.
* localiser-cascade: a low-resolution localiser finds the organ's box, a second network segments
  the box at its own resolution (deepbet's brain extraction is one).
Both work on the model's expected orientation and hand back a label map on the input grid.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from ..device import Compute
from ..errors import ModelError
from ..image import Image, check_volume
from ..inference.postprocess import clean_labels, largest_component
from ..inference.preprocess import finite, normalise, quantile_range, quantile_zscore, resize, shape_for_spacing
from ..inference.sliding_window import infer
from ..models.card import MAX_VOXELS, ModelCard
from ..models.loaded import checked_output, network_failures
from ..models.loading import LoadedModel
from ..orientation import Reorientation
from ..progress import Progress, no_progress, scaled

DEFAULT_ROI = (96, 96, 96)


def stack_channels(channels: list[torch.Tensor]) -> torch.Tensor:
    """(C, X, Y, Z) from C volumes; a single channel becomes a view, not a copy of the volume."""
    return channels[0][None] if len(channels) == 1 else torch.stack(channels)


class Segmenter:
    """Base: orientation and channel handling shared by every pipeline."""

    def __init__(self, model: LoadedModel, compute: Compute) -> None:
        self.card: ModelCard = model.card
        self.pipeline: dict[str, Any] = model.pipeline
        self.compute = compute
        self.networks = {name: net.to(compute.device).eval() for name, net in model.networks.items()}

    def __call__(self, image: Image, progress: Progress | None = None) -> Image:
        """Segment `image`; the result is a uint8 label map on exactly the input grid."""
        report = progress or no_progress
        check_volume(image, channels=self.card.channels)
        reorientation = Reorientation.of(image) if self.card.orientation == "RAS" else None
        channels = image.array if image.array.ndim == 4 else image.array[..., None]
        arrays = [channels[..., c] for c in range(channels.shape[-1])]
        if reorientation:
            arrays = [reorientation.to_canonical(a) for a in arrays]
        else:
            arrays = [np.ascontiguousarray(np.transpose(a, (2, 1, 0))) for a in arrays]
        spacing = np.asarray(image.spacing)[list(reorientation.world_axis.index(w) for w in range(3))] \
            if reorientation else np.asarray(image.spacing)
        volume = stack_channels([finite(torch.from_numpy(a.astype(np.float32, copy=False))) for a in arrays])
        report(0.02, "preprocessing")
        labels = self.predict(volume, tuple(spacing), scaled(report, 0.02, 0.95))
        report(0.97, "postprocessing")
        kji = reorientation.from_canonical(labels) if reorientation else np.transpose(labels, (2, 1, 0))
        report(1.0, "done")
        return image.with_array(np.ascontiguousarray(kji).astype(np.uint8))

    def predict(self, volume: torch.Tensor, spacing: tuple[float, ...], progress: Progress) -> np.ndarray:
        """(C, X, Y, Z) finite float tensor in model orientation -> (X, Y, Z) label array."""
        raise NotImplementedError


class SlidingWindowSegmenter(Segmenter):
    """Card-driven MONAI sliding-window segmentation."""

    def predict(self, volume: torch.Tensor, spacing: tuple[float, ...], progress: Progress) -> np.ndarray:
        card, shape = self.card, tuple(volume.shape[1:])
        volume = stack_channels([normalise(channel, card.intensity) for channel in volume])
        if card.spacing:
            volume = resize(volume, self._grid_at_card_spacing(shape, spacing), "trilinear")
        roi = card.roi_size or DEFAULT_ROI
        logits = infer(self.networks["network"], volume[None], roi, card.overlap, card.sw_batch_size,
                       self.compute, card.out_channels, progress, name=card.name)[0]
        if logits.shape[0] != card.out_channels:
            raise ModelError(f"the model produced {logits.shape[0]} output channel(s) but its card's labels "
                             f"need {card.out_channels}")
        labels = self._labels_from_logits(logits)
        if card.spacing:
            labels = resize(labels.float(), shape, "nearest-exact").to(torch.uint8)
        values = [label.value for label in card.labels]
        return clean_labels(labels.cpu().numpy(), values, card.largest_component, card.fill_holes)

    def _grid_at_card_spacing(self, shape: tuple[int, ...], spacing: tuple[float, ...]) -> tuple[int, ...]:
        """The grid the card's spacing resamples the image to, refused before allocation when absurdly large."""
        card = self.card
        with np.errstate(over="ignore", divide="ignore"):
            sizes = np.maximum(1.0, np.asarray(shape) * np.asarray(spacing) / np.asarray(card.spacing))
            voxels = float(np.prod(sizes))
        if not np.isfinite(voxels) or voxels > MAX_VOXELS:
            raise ModelError(f"model {card.name!r} expects a spacing of {list(card.spacing)} mm: this image "
                             f"({'x'.join(map(str, shape))} voxels of {'x'.join(f'{s:g}' for s in spacing)} mm) would "
                             f"become about {voxels:.3g} voxels, more than {MAX_VOXELS}")
        return shape_for_spacing(shape, spacing, card.spacing)

    def _labels_from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        card = self.card
        if card.mode == "argmax":
            return channel_argmax(logits)
        scores = torch.sigmoid(logits.float()) if card.activation == "sigmoid" else logits.float()
        labels = torch.zeros(logits.shape[1:], dtype=torch.uint8, device=logits.device)
        for channel, label in enumerate(card.labels):
            labels[scores[channel] > card.threshold] = label.value
        return labels


class LocaliserCascadeSegmenter(Segmenter):
    """Localise at low resolution, then segment the bounding box at the segmenter's resolution."""

    def predict(self, volume: torch.Tensor, spacing: tuple[float, ...], progress: Progress) -> np.ndarray:
        spec, card = self.pipeline, self.card
        device, foreground = self.compute.device, int(spec.get("foreground_channel", 1))
        x = volume[0].to(device)
        small = resize(x, tuple(spec["localiser_shape"]), "nearest-exact")
        low, high = quantile_range(small, card.intensity.get("low", 0.005), card.intensity.get("high", 0.995))

        def norm(t: torch.Tensor) -> torch.Tensor:
            return quantile_zscore(t, low, high, card.intensity.get("scale", 1.0), card.intensity.get("shift", 0.0))

        with torch.inference_mode(), network_failures(card.name):
            located = checked_output(self.networks["localiser"](norm(small)[None, None]), card.name, 1, None,
                                     small.shape)[0, foreground]
            progress(0.3, "localised")
            rough = largest_component((located > 0.5).cpu().numpy())
            box = bounding_box(rough, tuple(x.shape), float(spec.get("box_margin", 0.1)),
                               float(spec.get("box_profile_threshold", 0.02)))
            crop = x[box]
            detail = resize(crop, tuple(spec["segmenter_shape"]), "nearest-exact")
            scores = checked_output(self.networks["segmenter"](norm(detail)[None, None]), card.name, 1, None,
                                    detail.shape)[0, foreground]
            progress(0.85, "segmented")
            scores = resize(scores, tuple(crop.shape), "nearest-exact")
        labels = np.zeros(tuple(x.shape), dtype=np.uint8)
        labels[box] = (scores > card.threshold).cpu().numpy().astype(np.uint8) * card.labels[0].value
        return clean_labels(labels, [card.labels[0].value], card.largest_component, card.fill_holes)


def channel_argmax(logits: torch.Tensor) -> torch.Tensor:
    """torch.argmax over the channel axis (first maximum wins), as uint8.

    One pass per channel: on CPU, torch.argmax along the outermost, large-stride axis of a
    (K, X, Y, Z) volume is several times slower than the network's whole sliding window.
    """
    best, labels = logits[0].clone(), torch.zeros(logits.shape[1:], dtype=torch.uint8, device=logits.device)
    for channel in range(1, logits.shape[0]):
        better = logits[channel] > best
        labels[better] = channel
        torch.maximum(best, logits[channel], out=best)
    return labels


def bounding_box(mask: np.ndarray, shape: tuple[int, ...], margin: float, threshold: float
                 ) -> tuple[slice, ...]:
    """Box around a low-resolution mask, scaled to `shape` and widened by `margin` on each side.

    An axis position belongs to the box where the mask covers more than `threshold` of the
    plane through it, which ignores a few stray voxels.
    """
    if not mask.any():
        raise ModelError("the localiser found no foreground: is this the modality the model expects?")
    box = []
    for axis, size in enumerate(shape):
        other = tuple(a for a in range(3) if a != axis)
        profile = np.flatnonzero(mask.mean(axis=other) > threshold)
        if profile.size == 0:
            profile = np.flatnonzero(mask.any(axis=other))
        factor = size / mask.shape[axis]
        centre = factor * (profile.max() + 1 + profile.min()) / 2
        extent = (1 + 2 * margin) * factor * (profile.max() + 1 - profile.min())
        centre, extent = round(centre), round(extent)
        box.append(slice(max(0, int(centre - extent / 2)), min(size, int(centre + extent / 2))))
    return tuple(box)


PIPELINES: dict[str, Callable[[LoadedModel, Compute], Segmenter]] = {
    "sliding-window": SlidingWindowSegmenter,
    "localiser-cascade": LocaliserCascadeSegmenter,
}


def make_segmenter(model: LoadedModel, compute: Compute, fast: bool = False) -> Callable[..., Image]:
    """The pipeline that runs `model`; `fast` skips test-time augmentation where the pipeline has one (nnU-Net's
    mirroring)."""
    kind = model.pipeline.get("type", "sliding-window")
    if model.card.task != "segmentation":
        raise ModelError(f"model {model.card.name} is a {model.card.task} model, not a segmentation model")
    if kind == "nnunet":
        from .nnunet import NnunetSegmenter

        return NnunetSegmenter(model, compute, mirroring=not fast)
    if kind == "monai-bundle":
        from .bundle_run import BundleSegmenter

        return BundleSegmenter(model, compute)
    if kind not in PIPELINES:
        raise ModelError(f"unknown pipeline type {kind!r} for model {model.card.name}")
    return PIPELINES[kind](model, compute)
