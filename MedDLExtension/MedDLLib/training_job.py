"""Training a segmentation model from (volume, segmentation) pairs in the scene, on the background worker.

Segments are mapped to label values by name: the same name is the same label in every pair. The
model is trained straight into the model library (`meddl train --install-as`), so it is in the model
selector as soon as the first checkpoint is written, and Cancel keeps the best checkpoint so far.
A plot chart in the scene shows the training loss and validation Dice epoch by epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
from meddl.cli.segment import TrainRequest, TrainResult
from meddl.errors import InputError
from meddl.image import check_volume
from meddl.io import write_image
from meddl.models import catalog, store

from .jobs import FolderJob, JobState
from .segmentations import label_map_from_segmentation
from .volumes import image_from_volume_node


def segment_names(segmentation_nodes: Sequence[Any]) -> list[str]:
    """Every segment name, in order of first appearance: name i is label value i + 1."""
    names: list[str] = []
    for node in segmentation_nodes:
        segmentation = node.GetSegmentation()
        for index in range(segmentation.GetNumberOfSegments()):
            name = segmentation.GetNthSegment(index).GetName()
            if name not in names:
                names.append(name)
    return names


class TrainingChart:
    """A table of epoch, loss and validation Dice with a plot chart of both (a series each)."""

    COLUMNS = ("epoch", "loss", "dice")

    def __init__(self, scene, title: str) -> None:
        self.scene, self.title, self.nodes = scene, title, []
        self._create()

    def add(self, metrics: dict[str, Any]) -> None:
        table = self.table.GetTable()
        row = table.GetNumberOfRows()
        table.InsertNextBlankRow()
        for column, name in enumerate(self.COLUMNS):
            value = metrics.get(name)
            table.SetValue(row, column, float("nan") if value is None else float(value))
        table.Modified()

    def _create(self) -> None:
        import vtk

        self.table = self.scene.AddNewNodeByClass("vtkMRMLTableNode", f"{self.title} history")
        for name in self.COLUMNS:
            array = vtk.vtkDoubleArray()
            array.SetName(name)
            self.table.AddColumn(array)
        self.chart = self.scene.AddNewNodeByClass("vtkMRMLPlotChartNode", self.title)
        self.chart.SetXAxisTitle("epoch")
        self.chart.SetYAxisTitle("loss / Dice")
        self.nodes = [self.table, self.chart]
        for column, label in (("loss", "training loss"), ("dice", "validation Dice")):
            series = self.scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{self.title} {label}")
            series.SetAndObserveTableNodeID(self.table.GetID())
            series.SetXColumnName("epoch")
            series.SetYColumnName(column)
            series.SetPlotType(series.PlotTypeScatter)
            self.chart.AddAndObservePlotSeriesNodeID(series.GetID())
            self.nodes.append(series)

    def remove(self) -> None:
        for node in self.nodes:
            self.scene.RemoveNode(node)
        self.nodes = []


class TrainingJob(FolderJob):
    """Exports the pairs as image and label files, runs `meddl train --install-as` and charts its epochs."""

    def __init__(self, scene, pairs: Sequence[tuple[Any, Any]], model_id: str, epochs: int = 20,
                 time_budget_s: Optional[float] = None, device: str = "auto", init_from: Optional[str] = None,
                 validation_pairs: Sequence[tuple[Any, Any]] = ()) -> None:
        if not pairs:
            raise InputError("add at least one training pair: a volume and a segmentation drawn on it")
        catalog.check_user_id(model_id, "the model name")
        self.scene, self.model_id = scene, model_id
        self.names = segment_names([segmentation for _, segmentation in [*pairs, *validation_pairs]])
        if not self.names:
            raise InputError("the segmentations have no segments to learn")
        super().__init__("meddl-train-")
        try:
            images, labels = self._export(pairs, "train")
            val_images, val_labels = self._export(validation_pairs, "val")
        except Exception:
            self.clean_up()
            raise
        self.cancelled_message = "Cancelled before the first checkpoint; nothing was changed."
        label_names = ",".join(f"{value}:{name}" for value, name in enumerate(self.names, start=1))
        request = TrainRequest(tuple(images), tuple(labels), label_names, install_as=model_id,
                               val_images=tuple(val_images), val_labels=tuple(val_labels), epochs=epochs,
                               time_budget_s=time_budget_s or None, validate_every=1,
                               init_from=str(init_from) if init_from else None, device=device)
        self._start(request, device)
        self.chart = TrainingChart(scene, f"MedDL training {model_id}")

    def _export(self, pairs, prefix: str) -> tuple[list[str], list[str]]:
        images, labels = [], []
        for index, (volume, segmentation) in enumerate(pairs):
            image = image_from_volume_node(volume)
            check_volume(image, what=f"volume {volume.GetName()!r}")
            present = segment_names([segmentation])
            array = label_map_from_segmentation(segmentation, volume, present)
            values = np.array([0] + [self.names.index(name) + 1 for name in present], np.uint8)
            label = image.with_array(values[array])
            images.append(str(write_image(image, self.folder / f"{prefix}{index}.nrrd", compress=False)))
            labels.append(str(write_image(label, self.folder / f"{prefix}{index}-label.nrrd", compress=False)))
        return images, labels

    def poll(self) -> list[dict[str, Any]]:
        events = self.engine.poll()
        for event in events:
            if event.get("event") == "progress" and event.get("metrics"):
                self.chart.add(event["metrics"])
        if self.engine.state is JobState.FAILED:
            self.chart.remove()
        return events

    def cancel(self) -> None:
        """Stop training; the best checkpoint written so far stays in the library (with its chart)."""
        super().cancel()
        if store.installed(self.model_id) is None:
            self.chart.remove()
        else:
            self.cancelled_message = f"Cancelled; the best checkpoint so far is in the library as {self.model_id!r}."

    def _apply(self, result: TrainResult) -> str:
        """The model is already in the library; returns its id."""
        return result.model_id or self.model_id
