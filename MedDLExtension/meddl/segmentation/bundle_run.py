"""MONAI bundles run by their own workflow (models.bundle_workflow), their output mapped onto MedDL's results:
a label map (or binary channels) on the input's exact grid for segmentation, class probabilities for
classification."""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..device import Compute
from ..errors import ModelError
from ..image import Image, check_volume
from ..models.bundle_workflow import WorkflowOutput, run_workflow
from ..models.card import ModelCard
from ..models.loaded import LoadedModel
from ..progress import Progress, no_progress, scaled

GRID_TOLERANCE = 1e-3  # mm: NIfTI stores the affine in single precision


def on_input_grid(output: WorkflowOutput, name: str) -> np.ndarray:
    """The pred's spatial array, refused unless the bundle inverted its preprocessing onto the input's grid."""
    pred = output.pred
    spatial = tuple(pred.shape[1:])
    rank = len(output.input_shape)
    if spatial != output.input_shape:
        raise ModelError(f"bundle {name!r} returned a prediction of shape {spatial}, not the input's "
                         f"{output.input_shape}: its postprocessing must invert its preprocessing (Invertd)")
    if output.affine is not None:
        found = output.affine[:rank, list(range(rank)) + [-1]]
        expected = output.input_affine[:rank, list(range(rank)) + [-1]]
        if not np.allclose(found, expected, atol=GRID_TOLERANCE):
            raise ModelError(f"bundle {name!r} returned a prediction on another grid than the input's (its "
                             "postprocessing must invert its preprocessing: Invertd)")
    return pred


def label_values(pred: np.ndarray, card: ModelCard) -> np.ndarray:
    """(C, *spatial) pred -> label map: one channel of label values, or binary channels painted largest first
    (so that nested regions, such as a tumour's parts, stay visible), each channel the value of its label."""
    values = [label.value for label in card.labels]
    if pred.shape[0] == 1:
        labels = np.rint(pred[0])
        if not np.allclose(labels, pred[0], atol=1e-3):
            raise ModelError(f"bundle {card.name!r} returned scores, not a label map: its postprocessing must end "
                             "in a discrete label map (AsDiscreted)")
        unknown = sorted(set(np.unique(labels).astype(int).tolist()) - {0, *values})
        if unknown:
            raise ModelError(f"bundle {card.name!r} returned label values {unknown[:8]} that its labels do not name")
        return labels.astype(np.uint8)
    if pred.shape[0] != len(values) or not np.isin(pred, (0, 1)).all():
        raise ModelError(f"bundle {card.name!r} returned {pred.shape[0]} channels; MedDL maps binary channels, one "
                         f"per label ({len(values)} here)")
    labels = np.zeros(pred.shape[1:], np.uint8)
    for channel in np.argsort([-int(pred[c].sum()) for c in range(pred.shape[0])], kind="stable"):
        labels[pred[channel] > 0] = values[channel]
    return labels


class BundleSegmenter:
    """A trusted bundle's own workflow, giving a uint8 label map on the input's exact grid."""

    def __init__(self, model: LoadedModel, compute: Compute) -> None:
        self.model, self.compute = model, compute

    def __call__(self, image: Image, progress: Optional[Progress] = None) -> Image:
        report = progress or no_progress
        card = self.model.card
        check_volume(image, channels=card.channels)
        output = run_workflow(self.model, image, self.compute, scaled(report, 0.0, 0.97))
        labels = label_values(on_input_grid(output, card.name), card)
        kji = np.transpose(labels) if labels.ndim == 3 else np.transpose(labels)[None]
        report(1.0, "done")
        return image.with_array(np.ascontiguousarray(kji))


def bundle_probabilities(model: LoadedModel, image: Image, compute: Compute,
                         progress: Optional[Progress] = None) -> tuple[float, ...]:
    """A classifier bundle's class probabilities for one image (its postprocessing's, or the softmax of scores)."""
    card = model.card
    check_volume(image, channels=card.channels)
    scores = run_workflow(model, image, compute, progress).pred.astype(np.float64).ravel()
    if scores.size != len(card.labels):
        raise ModelError(f"bundle {card.name!r} returned {scores.size} scores but its card lists "
                         f"{len(card.labels)} classes")
    if not np.all((scores >= 0) & (scores <= 1)):
        scores = np.exp(scores - scores.max())
        scores /= scores.sum()
    return tuple(float(p) for p in scores)
