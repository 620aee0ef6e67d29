"""Registration of a moving volume (and its segmentation) to a fixed volume on the background worker.

On success the scene gets, all at once: a grid transform node (the displacement field, affine part
included), the moving volume resampled on the fixed grid, the segmentation carried along if one
was given, and a table of quality figures. A failed or cancelled job adds nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from meddl.cli.register import RegisterRequest, RegisterResult
from meddl.image import check_volume
from meddl.io import read_image, write_image
from meddl.registration.field_files import read_displacement_field

from .enhancement_job import copy_window_level
from .jobs import FolderJob
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
                 similarity: str = "lncc", device: str = "auto", iterations: Optional[int] = None,
                 model: Optional[str] = None, time_budget_s: Optional[float] = None) -> None:
        self.scene, self.fixed_volume, self.moving_volume = scene, fixed_volume, moving_volume
        self.moving_segmentation, self.segments = moving_segmentation, []
        images = [(image_from_volume_node(node), node) for node in (fixed_volume, moving_volume)]
        for image, node in images:
            check_volume(image, what=f"volume {node.GetName()!r}")
        super().__init__("meddl-register-")
        try:
            fixed_path, moving_path = (str(write_image(image, self.folder / name, compress=False))
                                       for (image, _), name in zip(images, ("fixed.nrrd", "moving.nrrd")))
            labels = self._export_segmentation(images[1][0]) if moving_segmentation is not None else None
        except Exception:
            self.clean_up()
            raise
        request = RegisterRequest(fixed_path, moving_path, str(self.folder / "field.nrrd"),
                                  str(self.folder / "warped.nrrd"), labels,
                                  str(self.folder / "warped-labels.nrrd") if labels else None,
                                  str(self.folder / "report.json"), method=method, similarity=similarity,
                                  iterations=iterations or None, time_budget=time_budget_s or None,
                                  model=str(model) if model else None, device=device, compress=False)
        self._start(request, device)

    def _export_segmentation(self, moving_image) -> str:
        segmentation = self.moving_segmentation.GetSegmentation()
        self.segments = [segmentation.GetNthSegment(n) for n in range(segmentation.GetNumberOfSegments())]
        names = [segment.GetName() for segment in self.segments]
        labels = label_map_from_segmentation(self.moving_segmentation, self.moving_volume, names)
        return str(write_image(moving_image.with_array(labels), self.folder / "labels.nrrd", compress=False))

    def _apply(self, result: RegisterResult) -> RegistrationOutputs:
        """Add the transform, the warped volume and segmentation, and the quality table."""
        field, grid = read_displacement_field(result.transform)
        warped = read_image(result.warped)
        labels = read_image(result.warped_labels) if result.warped_labels else None
        report = result.report
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
