"""Classification of volume nodes in a background worker: a table node and saliency volumes on success."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Optional

import numpy as np
from meddl.cli.classify import ClassifyRequest, ClassifyResult
from meddl.errors import InputError
from meddl.image import Image, check_volume
from meddl.io import read_image, write_image

from .jobs import FolderJob
from .segmentations import place_beside_in_hierarchy
from .tables import fill_table_node
from .volumes import image_from_volume_node, volume_node_from_image

SALIENCY_COLORS = "vtkMRMLColorTableNodeRainbow"


def roi_box(image: Image, roi_node) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """The (k, j, i) index box of `image` that covers a markups ROI's world bounding box."""
    bounds = [0.0] * 6
    roi_node.GetBounds(bounds)  # RAS: xmin, xmax, ymin, ymax, zmin, zmax
    corners = np.array([[x, y, z, 1.0] for x in bounds[0:2] for y in bounds[2:4] for z in bounds[4:6]])
    ijk = (np.linalg.inv(image.index_to_ras()) @ corners.T).T[:, :3]
    shape_ijk = np.array(image.shape[::-1])
    low = np.clip(np.floor(ijk.min(axis=0) + 0.5), 0, shape_ijk).astype(int)
    high = np.clip(np.floor(ijk.max(axis=0) + 0.5) + 1, 0, shape_ijk).astype(int)
    if np.any(high <= low):
        raise InputError(f"the ROI {roi_node.GetName()!r} does not overlap the volume")
    return tuple(low[::-1].tolist()), tuple(high[::-1].tolist())


class ClassificationJob(FolderJob):
    """Exports the (ROI-cropped) inputs, runs `meddl classify`, and applies the results only on success."""

    def __init__(self, scene, volumes: list, model: str, device: str = "auto", table_node=None,
                 saliency_class: Optional[str] = None, with_saliency: bool = False, roi_node=None) -> None:
        if not volumes:
            raise InputError("choose at least one volume to classify")
        self.scene, self.volumes, self.table_node = scene, list(volumes), table_node
        super().__init__("meddl-classify-")
        self.boxes: list[Any] = []
        paths = []
        try:
            for index, volume in enumerate(self.volumes):
                image = image_from_volume_node(volume)
                check_volume(image, what=f"volume {volume.GetName()!r}")
                box = roi_box(image, roi_node) if roi_node is not None else None
                self.boxes.append((image, box))
                paths.append(str(write_image(image.crop(*box) if box else image,
                                             self.folder / f"input{index}.nrrd", compress=False)))
        except Exception:
            self.clean_up()
            raise
        request = ClassifyRequest(tuple(paths), str(model), str(self.folder / "results.csv"),
                                  str(self.folder / "saliency") if with_saliency else None,
                                  saliency_class if with_saliency else None, device)
        self._start(request, device)
        self.saliency_nodes: list = []

    def _apply(self, result: ClassifyResult):
        """Fill (or create) the table node and add the saliency volumes; returns the table node."""
        rows = list(csv.DictReader(Path(result.csv).read_text().splitlines()))
        maps = [self._full_grid_saliency(i, path) for i, path in enumerate(result.saliency)]
        return self._fill_scene(rows, maps)

    def _full_grid_saliency(self, index: int, path: str) -> Image:
        """A saliency map on the whole input grid (zero outside the ROI)."""
        image, box = self.boxes[index]
        heat = read_image(path)
        if box is None:
            return heat
        full = np.zeros(image.shape, np.float32)
        full[tuple(slice(a, b) for a, b in zip(*box))] = heat.array
        return image.with_array(full)

    def _fill_scene(self, rows: list[dict], maps: list[Image]):
        table_rows = []
        for volume, row in zip(self.volumes, rows):
            probabilities = {key: float(value) for key, value in row.items() if key.startswith("p_")}
            table_rows.append({"volume": volume.GetName(), "predicted": row["predicted"], **probabilities,
                               "model": row["model"]})
        table = self.table_node or self.scene.AddNewNodeByClass("vtkMRMLTableNode", "MedDL classification")
        fill_table_node(table, table_rows)
        for volume, heat in zip(self.volumes, maps):
            node = volume_node_from_image(self.scene, heat, f"{volume.GetName()} saliency")
            if self.scene.GetNodeByID(SALIENCY_COLORS) is not None:
                node.GetDisplayNode().SetAndObserveColorNodeID(SALIENCY_COLORS)
            node.GetDisplayNode().SetAutoWindowLevel(False)
            node.GetDisplayNode().SetWindowLevelMinMax(0.0, 1.0)
            place_beside_in_hierarchy(self.scene, node, volume)
            self.saliency_nodes.append(node)
        return table

