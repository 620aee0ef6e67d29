"""Registration of a moving volume (and its segmentation) to a fixed volume on the background worker.

On success the scene gets, all at once: a grid transform node (the displacement field, affine part
included), the moving volume resampled on the fixed grid, the segmentation carried along if one
was given, and a table of quality figures. A failed or cancelled job adds nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional

from meddl.image import check_volume
from meddl.io import read_image, write_image
from meddl.registration.fields import read_displacement_field

from .enhancement_job import copy_window_level
from .jobs import EngineJob, FolderJob
from .segmentations import apply_label_map, label_map_from_segmentation, place_beside_in_hierarchy
from .tables import fill_table_node
from .transforms import grid_transform_node
from .volumes import image_from_volume_node, volume_node_from_image

FIGURES = (("ncc_before", "normalised cross-correlation before"), ("ncc_after", "normalised cross-correlation after"),
           ("folded_share", "share of folded voxels (Jacobian determinant <= 0)"))


@dataclass
class RegistrationOutputs:
    transform: Any
    warped_volume: Any
    warped_segmentation: Any
    table: Any


class RegistrationJob(FolderJob):
    """Exports fixed, moving and the moving segmentation, runs `meddl register`, imports every result."""

    def __init__(self, scene, fixed_volume, moving_volume, moving_segmentation=None, method: str = "deformable",
                 similarity: str = "lncc", device: str = "auto", iterations: Optional[int] = None) -> None:
        self.scene, self.fixed_volume, self.moving_volume = scene, fixed_volume, moving_volume
        self.moving_segmentation, self.segments = moving_segmentation, []
        images = [(image_from_volume_node(node), node) for node in (fixed_volume, moving_volume)]
        for image, node in images:
            check_volume(image, what=f"volume {node.GetName()!r}")
        super().__init__("meddl-register-")
        try:
            paths = [str(write_image(image, self.folder / name, compress=False))
                     for (image, _), name in zip(images, ("fixed.nrrd", "moving.nrrd"))]
            arguments = ["register", *paths, "--out-transform", str(self.folder / "field.nrrd"),
                         "--out-warped", str(self.folder / "warped.nrrd"), "--out-report",
                         str(self.folder / "report.json"), "--method", method, "--similarity", similarity,
                         "--device", device, "--no-compress"]
            if moving_segmentation is not None:
                arguments += self._export_segmentation(images[1][0])
        except Exception:
            self.clean_up()
            raise
        if iterations:
            arguments += ["--iterations", str(iterations)]
        self.engine = EngineJob(arguments, device=device)

    def _export_segmentation(self, moving_image) -> list[str]:
        segmentation = self.moving_segmentation.GetSegmentation()
        self.segments = [segmentation.GetNthSegment(n) for n in range(segmentation.GetNumberOfSegments())]
        names = [segment.GetName() for segment in self.segments]
        labels = label_map_from_segmentation(self.moving_segmentation, self.moving_volume, names)
        path = write_image(moving_image.with_array(labels), self.folder / "labels.nrrd", compress=False)
        return ["--moving-labels", str(path), "--out-warped-labels", str(self.folder / "warped-labels.nrrd")]

    def _apply(self) -> RegistrationOutputs:
        """Add the transform, the warped volume and segmentation, and the quality table."""
        field, grid = read_displacement_field(self.folder / "field.nrrd")
        warped = read_image(self.folder / "warped.nrrd")
        labels = read_image(self.folder / "warped-labels.nrrd") if self.segments else None
        report = json.loads((self.folder / "report.json").read_text())
        name = self.moving_volume.GetName()
        transform = grid_transform_node(self.scene, field, grid, f"{name} to {self.fixed_volume.GetName()}")
        volume = volume_node_from_image(self.scene, warped, f"{name} registered")
        copy_window_level(self.moving_volume, volume)
        place_beside_in_hierarchy(self.scene, volume, self.fixed_volume)
        segmentation = None
        if labels is not None:
            label_table = [{"value": index, "name": segment.GetName(), "color": segment.GetColor(),
                            "terminology": None} for index, segment in enumerate(self.segments, start=1)]
            segmentation = apply_label_map(self.scene, labels, label_table, self.fixed_volume,
                                           name=f"{self.moving_segmentation.GetName()} registered")
        table = self.scene.AddNewNodeByClass("vtkMRMLTableNode", f"{name} registration quality")
        fill_table_node(table, [{"figure": text, "value": float(report[key])} for key, text in FIGURES])
        return RegistrationOutputs(transform, volume, segmentation, table)
