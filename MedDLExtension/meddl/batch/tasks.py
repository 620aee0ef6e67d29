"""What a batch does for each case of each command: segment, classify, enhance. Each task is a plain dataclass
(picklable, so a cluster worker can rebuild it) that loads its model once in the process running it."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..dicom import series_files
from ..dicom_seg import INSTALL_HINT, write_dicom_seg
from ..errors import InputError
from ..io import stack_channels_onto, write_image
from ..outputs import OutputSet
from ..progress import Progress
from .cases import Case
from .summary import DONE, CaseRecord, table_text, write_text_whole

LABEL_FORMATS = ("nii.gz", "nrrd", "mha", "dicom-seg")


def label_volumes_ml(labels, card_labels) -> dict[str, float]:
    """Each label's volume in millilitres: its voxel count times the voxel volume (mm^3 / 1000)."""
    voxel_ml = float(np.prod(labels.spacing)) / 1000.0
    counts = np.bincount(labels.array.ravel().astype(np.int64, copy=False), minlength=256)
    return {f"volume_ml {label.name}": round(float(counts[label.value]) * voxel_ml, 3)
            if label.value < len(counts) else 0.0 for label in card_labels}


@dataclass
class SegmentCases:
    """`meddl segment --batch`: a label map (or a DICOM SEG) and its labels sidecar per case."""

    model: Optional[str] = None
    device: str = "auto"
    trust_model: bool = False
    fast: bool = False
    folds: Optional[tuple[str, ...]] = None
    output_format: str = "nii.gz"
    compress: bool = True
    command: str = "segment"
    _segmenter: Any = field(default=None, init=False, repr=False)
    _loaded: Any = field(default=None, init=False, repr=False)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_segmenter": None, "_loaded": None}  # a worker loads its own model

    def check(self, cases: list[Case]) -> None:
        if self.output_format != "dicom-seg":
            return
        files = [case.id for case in cases if not case.dicom_files and not Path(case.inputs[0]).is_dir()]
        if files:
            raise InputError(f"--output-format dicom-seg references the source DICOM series, but these cases are "
                             f"image files: {', '.join(files[:5])}{' ...' if len(files) > 5 else ''}")
        if not all(importlib.util.find_spec(name) for name in ("highdicom", "pydicom")):
            raise InputError(INSTALL_HINT)

    def load(self, progress: Progress) -> None:
        from ..segmentation.predict import segmenter_for

        self._loaded, self._segmenter = segmenter_for(self.model, self.device, self.trust_model, self.fast,
                                                      self.folds)

    def read(self, case: Case):
        first, *others = case.read()
        return stack_channels_onto(first, others)

    def run(self, case: Case, image, folder: Path, progress: Progress) -> tuple[list[Path], dict[str, Any]]:
        from ..segmentation.predict import labels_path_for, write_labels_sidecar

        card = self._loaded.card
        labels = self._segmenter(image, progress)
        with OutputSet(inputs=list(case.inputs)) as outputs:
            if self.output_format == "dicom-seg":
                target = outputs.add(folder / f"{case.id}.seg.dcm")
                self._write_dicom_seg(case, labels, target, outputs)
            else:
                target = outputs.add(folder / f"{case.id}.{self.output_format}")
                write_image(labels, target, self.compress, outputs)
            sidecar = outputs.add(labels_path_for(folder / f"{case.id}.nii.gz"))
            write_labels_sidecar(sidecar, card, outputs)
            outputs.commit()
        return [target, sidecar], label_volumes_ml(labels, card.labels)

    def _write_dicom_seg(self, case: Case, labels, target: Path, outputs: OutputSet) -> None:
        files = list(case.dicom_files) or series_files(Path(case.inputs[0]))
        write_dicom_seg(labels, self._loaded.card.labels, files, target, self._loaded.card.name, outputs)

    def finish(self, records: list[CaseRecord], folder: Path) -> Path | None:
        return None


@dataclass
class ClassifyCases:
    """`meddl classify --batch`: one table of class probabilities for the cohort (and Grad-CAM maps)."""

    model: str
    device: str = "auto"
    trust_model: bool = False
    saliency: bool = False
    class_name: Optional[str] = None
    command: str = "classify"
    table_name: str = "classification.csv"
    _loaded: Any = field(default=None, init=False, repr=False)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_loaded": None}

    def check(self, cases: list[Case]) -> None:
        multi = [case.id for case in cases if len(case.inputs) > 1]
        if multi:
            raise InputError(f"a classifier takes one image per case; cases with more: {', '.join(multi[:5])}")

    def load(self, progress: Progress) -> None:
        from ..classification.predict import classifier_model

        self._loaded = classifier_model(self.model, self.trust_model)

    def read(self, case: Case):
        return case.read(allow_2d=True)[0]

    def run(self, case: Case, image, folder: Path, progress: Progress) -> tuple[list[Path], dict[str, Any]]:
        from ..classification.predict import classify, saliency

        result = classify([image], self._loaded, self.device, [case.inputs[0]], progress=progress)[0]
        row = {key: value for key, value in result.as_row().items() if key != "input"}
        if not self.saliency:
            return [], row
        with OutputSet(inputs=list(case.inputs)) as outputs:
            target = outputs.add(folder / f"{case.id}_saliency.nii.gz")
            write_image(saliency(image, self._loaded, self.class_name or result.predicted, self.device), target,
                        outputs=outputs)
            outputs.commit()
        return [target], row

    def finish(self, records: list[CaseRecord], folder: Path) -> Path | None:
        """The cohort's table: one row per classified case (case, predicted, model, p_<class>)."""
        rows = [{"case": record.case, **record.details} for record in records if record.status == DONE]
        write_text_whole(folder / self.table_name, table_text(rows))
        return folder / self.table_name
