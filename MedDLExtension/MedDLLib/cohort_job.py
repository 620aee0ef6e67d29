"""A cohort segmented as one queued job on the background worker: volumes checked in the scene, a folder, or DICOM
series (e.g. selected in Slicer's DICOM database). A table node shows each case's status as it ends; results go to
an output folder and can be loaded into the scene at the end. Cancelling keeps the cases already finished."""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import vtk
from meddl.batch.cases import Case, find_cases, safe_case_ids
from meddl.batch.summary import DONE
from meddl.cli.batch import BatchResult, SegmentBatchRequest
from meddl.image import Image, check_volume
from meddl.io import read_dicom_files, read_image, write_image

from .jobs import FolderJob
from .segmentations import apply_label_map
from .volumes import image_from_volume_node, volume_node_from_image

STATUS_COLUMNS = ("case", "status", "message", "seconds")


class CohortJob(FolderJob):
    """Runs `meddl segment --batch` on the cases given, into `output_folder`.

    Give exactly one source: `volumes` (volume nodes, exported privately; case = node name), `folder` (image files
    and DICOM series under it) or `dicom_series` (case name -> the series' files). `status_table` (a table node,
    new when None) gets one row per case as it ends. With `load_results`, `finish()` adds each finished case's
    segmentation to the scene (and the case's volume, for cases that were not already in the scene).
    """

    cancelled_message = "Cancelled; the cases already finished stay in the output folder (Resume continues)."

    def __init__(self, scene, output_folder: str | Path, model: str | None = None, device: str = "auto",
                 volumes: Sequence = (), folder: str | Path | None = None,
                 dicom_series: Mapping[str, Sequence[str]] | None = None, load_results: bool = False,
                 output_format: str = "nii.gz", resume: bool = False, trust_model: bool = False, fast: bool = False,
                 status_table=None) -> None:
        given = [name for name, value in (("volumes", volumes), ("folder", folder), ("dicom_series", dicom_series))
                 if value]
        if len(given) != 1:
            raise ValueError(f"give one source of cases (volumes, a folder or DICOM series), not {given or 'none'}")
        self.scene, self.load_results, self.output_format = scene, load_results, output_format
        self.source_folder = Path(folder) if folder else None
        self.volumes_by_case: dict[str, Any] = {}
        self.rows: list[dict[str, Any]] = []
        images = [(node, image_from_volume_node(node)) for node in volumes]
        for node, image in images:
            check_volume(image, what=f"volume {node.GetName()!r}")
        super().__init__("meddl-cohort-")
        try:
            inputs = folder if folder else self._export(images, dicom_series or {})
        except Exception:
            self.clean_up()
            raise
        self.status_table = status_table or scene.AddNewNodeByClass("vtkMRMLTableNode", "MedDL cohort")
        self._show_rows()
        request = SegmentBatchRequest(str(inputs), str(output_folder), str(model) if model else None, device,
                                      trust_model, resume, output_format, fast)
        self._start(request, device)

    def _export(self, images: list[tuple[Any, Image]], dicom_series: Mapping[str, Sequence[str]]) -> Path:
        """A CSV of cases in the private folder: exported volumes, or each DICOM series linked into a folder."""
        rows = []
        names = safe_case_ids([node.GetName() for node, _ in images])  # the ids the engine keeps
        for index, (name, (node, image)) in enumerate(zip(names, images)):
            path = write_image(image, self.folder / f"volume{index}.nrrd", compress=False)
            rows.append((name, path))
            self.volumes_by_case[name] = node
        for index, (case, files) in enumerate(dicom_series.items()):
            series_folder = self.folder / f"series{index}"
            series_folder.mkdir()
            for number, file in enumerate(files):
                _link_or_copy(Path(file), series_folder / f"{number:05d}.dcm")
            rows.append((case, series_folder))
        table = self.folder / "cases.csv"
        with open(table, "w", newline="", encoding="utf-8") as stream:
            writer = csv.writer(stream)
            writer.writerow(["case", "image"])
            writer.writerows((case, str(path)) for case, path in rows)
        return table

    def poll(self) -> list[dict[str, Any]]:
        """Events since the last poll; each finished case adds its row to the status table."""
        events = self.engine.poll()
        ended = [event["metrics"] for event in events if isinstance(event.get("metrics"), dict)
                 and "case" in event["metrics"]]
        for case in ended:
            self.rows.append({"case": case["case"], "status": case["status"], "message": case.get("message", ""),
                              "seconds": case.get("seconds", 0.0)})
        if ended:
            self._show_rows()
        return events

    def _show_rows(self) -> None:
        table = self.status_table.GetTable()
        was_modifying = self.status_table.StartModify()
        try:
            self.status_table.RemoveAllColumns()
            for name in STATUS_COLUMNS:
                column = vtk.vtkDoubleArray() if name == "seconds" else vtk.vtkStringArray()
                column.SetName(name)
                for row in self.rows:
                    column.InsertNextValue(row[name])
                table.AddColumn(column)
            table.Modified()
        finally:
            self.status_table.EndModify(was_modifying)

    def _apply(self, result: BatchResult) -> BatchResult:
        """Fill the status table from the summary (also the cases a resumed run skipped); load results if asked."""
        self.rows = [{"case": case["case"], "status": case["status"], "message": case["message"],
                      "seconds": float(case["seconds"])} for case in result.cases]
        self._show_rows()
        if self.load_results:
            series = self._dicom_cases()
            for case in result.cases:
                if case["status"] == DONE:
                    self._load_case(case, series.get(case["case"]))
        return result

    def _dicom_cases(self) -> dict[str, Case]:
        """A folder's DICOM cases by id, with their series' files: a folder holding several series is one case per
        series, and only the files say which (the engine found them the same way)."""
        if self.source_folder is None:
            return {}
        return {case.id: case for case in find_cases(self.source_folder) if case.dicom_files}

    def _load_case(self, case: Mapping[str, Any], series: Case | None = None) -> None:
        output, sidecar = (Path(path) for path in case["outputs"][:2])
        table = json.loads(sidecar.read_text(encoding="utf-8"))
        volume = self.volumes_by_case.get(case["case"])
        files = list(series.dicom_files) if series is not None and list(series.inputs) == case["inputs"] else None
        if volume is None:
            image = read_dicom_files(files, case["inputs"][0]) if files else read_image(case["inputs"][0])
            volume = volume_node_from_image(self.scene, image, case["case"])
        else:
            image = image_from_volume_node(volume)
        labels = labels_of_output(output, image, case["inputs"][0], files)
        apply_label_map(self.scene, labels, table["labels"], volume, name=f"{volume.GetName()} {table['model']}")


def labels_of_output(output: Path, image: Image, source: str, files: Sequence[str] | None = None) -> Image:
    """A cohort output's label map on the case's grid: a label-map file, or a DICOM SEG on its source series
    (`files`, in slice order; by default the one series in the folder `source`)."""
    if not output.name.endswith(".seg.dcm"):
        return read_image(output)
    from meddl.dicom import series_files
    from meddl.dicom_seg import read_dicom_seg

    array, _ = read_dicom_seg(output, list(files) if files else series_files(Path(source)))
    return image.with_array(array)


def _link_or_copy(source: Path, target: Path) -> None:
    """A link to a DICOM file (no copy of a big series), or a copy where links are not allowed (Windows)."""
    try:
        os.symlink(source.resolve(), target)
    except OSError:
        shutil.copy2(source, target)
