"""The segmentation task: image in, label map and its labels out (Python API of `meddl segment`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from ..device import select_compute
from ..image import Image, blank_image
from ..io import IMAGE_SUFFIXES, image_suffix, read_image, stack_channels_onto, write_image
from ..models.card import Label, ModelCard
from ..models.catalog import default_model
from ..models.formats import model_files
from ..models.loading import LoadedModel, load_model
from ..outputs import OutputSet
from ..progress import Progress, no_progress, scaled
from ..tasks import require_task
from .segmenters import make_segmenter


@dataclass(frozen=True)
class SegmentationResult:
    """A label map on the input grid and the labels its values stand for."""

    labels: Image
    card: ModelCard

    def label_table(self) -> list[dict]:
        """Labels as JSON-ready dictionaries (value, name, color, terminology)."""
        return [asdict(label) for label in self.card.labels]


def segment(image: Image, model: str | Path | LoadedModel | None = None, device: str = "auto",
            progress: Progress | None = None, trust_model: bool = False, fast: bool = False,
            folds: tuple[str, ...] | None = None) -> SegmentationResult:
    """Segment an image with a model (catalog id, path, or an already loaded model). `fast` skips test-time
    augmentation (nnU-Net's mirroring); `folds` chooses an nnU-Net model's folds (default: all)."""
    report = progress or no_progress
    report(0.0, "loading model")
    loaded, segmenter = segmenter_for(model, device, trust_model, fast, folds)
    labels = segmenter(image, scaled(report, 0.05, 1.0))
    return SegmentationResult(labels, loaded.card)


def segmenter_for(model: str | Path | LoadedModel | None = None, device: str = "auto", trust_model: bool = False,
                  fast: bool = False, folds: tuple[str, ...] | None = None) -> tuple[LoadedModel, Callable]:
    """The loaded segmentation model (the catalog's default for None) and the pipeline that runs it, built once
    for any number of images."""
    loaded = model if isinstance(model, LoadedModel) else load_model(model or default_model("segmentation"),
                                                                     trust=trust_model, folds=folds)
    require_task(loaded.card, "segmentation")
    return loaded, make_segmenter(loaded, select_compute(device), fast)


def write_labels_sidecar(path: Path, card: ModelCard, outputs: OutputSet) -> None:
    """The `.labels.json` that names a label map's labels (model, then value, name, colour, terminology), staged
    in `outputs`."""
    table = [asdict(label) for label in card.labels]
    outputs.staged(path).write_text(json.dumps({"model": card.name, "labels": table}, indent=1))


def labels_path_for(output: Path) -> Path:
    """The JSON sidecar that names the labels of a label-map file."""
    suffix = image_suffix(output)
    name = output.name[: len(output.name) - len(suffix)] if suffix else output.name
    return output.with_name(name + ".labels.json")


def segment_file(input_path: str | Path, output_path: str | Path, model: str | None = None,
                 device: str = "auto", progress: Progress | None = None, trust_model: bool = False,
                 compress: bool = True, fast: bool = False, folds: tuple[str, ...] | None = None,
                 more_inputs: tuple[str | Path, ...] = ()) -> SegmentationResult:
    """Read, segment and write a label map and its labels sidecar; both appear together or not at all.

    `more_inputs` are the further channels of a multi-channel model, in its order, each resampled onto the
    first input's grid."""
    report = progress or no_progress
    with OutputSet(inputs=[input_path, *more_inputs, *model_files(model)]) as outputs:
        output_path = outputs.add(output_path, IMAGE_SUFFIXES)
        sidecar = outputs.add(labels_path_for(output_path))
        image = read_image(input_path)
        image = stack_channels_onto(image, [read_image(path) for path in more_inputs])
        result = segment(image, model, device, scaled(report, 0.0, 0.95), trust_model, fast, folds)
        write_image(result.labels, output_path, compress, outputs)
        write_labels_sidecar(sidecar, result.card, outputs)
        outputs.commit()
    report(1.0, "written")
    return result


def dry_run(loaded: LoadedModel) -> None:
    """Segment a blank volume of one patch on the CPU: what the model library runs before it lists a model."""
    card = loaded.card
    shape = tuple(card.roi_size or (32, 32, 32))[::-1]
    segment(blank_image(shape, card.channels), loaded, "cpu")


__all__ = ["Label", "SegmentationResult", "segment", "segment_file", "labels_path_for"]
