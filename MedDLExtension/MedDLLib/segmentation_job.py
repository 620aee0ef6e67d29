"""Segmentation of a volume node in a background worker, applied to the scene only on success."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from meddl.cli.segment import SegmentRequest, SegmentResult
from meddl.image import check_volume
from meddl.io import read_image, write_image

from .jobs import FolderJob
from .segmentations import apply_label_map
from .volumes import image_from_volume_node


class SegmentationJob(FolderJob):
    """Exports the input to a private folder, runs `meddl segment` there, imports the result.

    The input node is only read. The scene changes once, in `finish()`, and only when the job
    succeeded; a failed or cancelled job leaves the scene as it was.
    """

    def __init__(self, scene, input_volume, model: str | None = None, device: str = "auto",
                 output_segmentation=None, trust_model: bool = False, more_volumes: Sequence = (),
                 fast: bool = False) -> None:
        """`more_volumes`: the further input channels of a multi-channel model, in its order (each is resampled
        onto `input_volume`'s grid); `fast`: no test-time augmentation (nnU-Net's mirroring)."""
        self.scene = scene
        self.input_volume = input_volume
        self.output_segmentation = output_segmentation
        images = [image_from_volume_node(node) for node in (input_volume, *more_volumes)]
        for node, image in zip((input_volume, *more_volumes), images):
            check_volume(image, what=f"volume {node.GetName()!r}")
        super().__init__("meddl-job-")
        try:
            paths = [write_image(image, self.folder / f"input{index}.nrrd", compress=False)
                     for index, image in enumerate(images)]
        except Exception:
            self.clean_up()
            raise
        self.input_path = paths[0]
        request = SegmentRequest(str(self.input_path), str(self.folder / "labels.nrrd"), str(model) if model else None,
                                 device, trust_model, compress=False, fast=fast,
                                 more_inputs=tuple(str(path) for path in paths[1:]))
        self._start(request, device)
        self.segmentation_node = None

    def _apply(self, result: SegmentResult):
        """Put the label map into the segmentation node; returns the node."""
        labels = read_image(result.labels)
        table = json.loads(Path(result.label_table).read_text(encoding="utf-8"))
        name = f"{self.input_volume.GetName()} {table['model']}"
        self.segmentation_node = apply_label_map(
            self.scene, labels, table["labels"], self.input_volume, self.output_segmentation, name)
        return self.segmentation_node
