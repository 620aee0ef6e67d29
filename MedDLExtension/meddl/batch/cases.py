"""The cases of a cohort: from a folder of image files, a folder tree of DICOM series, or a CSV table.

A case is what one run of a model takes: an id (used to name its outputs, so it is made safe as a file
name and unique) and its input images, the first being the main one and the rest a multi-channel model's
further channels. A DICOM case also keeps its series' files in slice order, so that a DICOM SEG written
for it can reference them.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from ..dicom import check_uniform_slices
from ..errors import InputError, first_line
from ..image import Image
from ..io import IMAGE_SUFFIXES, image_from_sitk, image_suffix, read_image

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")  # 2D images a classifier takes
ID_COLUMNS = ("case", "id", "case_id")


@dataclass(frozen=True)
class Case:
    """One case: `inputs` are image files or DICOM folders (first the main image, then extra channels);
    `dicom_files` are a DICOM case's series files in slice order."""

    id: str
    inputs: tuple[str, ...]
    dicom_files: tuple[str, ...] = ()

    def read(self, allow_2d: bool = False) -> list[Image]:
        """The case's images, the main one first."""
        if self.dicom_files:
            return [read_series_files(list(self.dicom_files), self.inputs[0])]
        return [read_image(path, allow_2d=allow_2d) for path in self.inputs]


def read_series_files(files: list[str], source: str) -> Image:
    """A DICOM series from its files (already in slice order), checked for missing slices."""
    check_uniform_slices(files, Path(source))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        return image_from_sitk(reader.Execute(), source)
    except RuntimeError as error:
        raise InputError(f"cannot read the DICOM series in {source}: {first_line(error)}") from None


def find_cases(source: str | Path, allow_2d: bool = False) -> list[Case]:
    """Every case in `source`: a CSV table, or a folder (its image files, and every DICOM series in its tree).

    `allow_2d` also takes 2D pictures (PNG, JPEG, ...) from a folder, for classifiers."""
    source = Path(source)
    if not source.exists():
        raise InputError(f"--batch {source}: not found")
    if source.is_file():
        if source.suffix.lower() != ".csv":
            raise InputError(f"--batch {source}: give a folder of images, a folder of DICOM series or a .csv table")
        return _unique(_csv_cases(source))
    suffixes = IMAGE_SUFFIXES + (PICTURE_SUFFIXES if allow_2d else ())
    files = sorted(path for path in source.iterdir() if path.is_file() and _has_suffix(path, suffixes))
    cases = [Case(_stem(path), (str(path),)) for path in files]
    cases += _dicom_cases(source)
    if not cases:
        raise InputError(f"--batch {source}: no image files ({', '.join(suffixes)}) and no DICOM series found")
    return _unique(cases)


def _has_suffix(path: Path, suffixes: tuple[str, ...]) -> bool:
    return path.name.lower().endswith(suffixes) and not path.name.startswith(".")


def _stem(path: Path) -> str:
    suffix = image_suffix(path) or path.suffix
    return path.name[: len(path.name) - len(suffix)] if suffix else path.name


def _dicom_cases(root: Path) -> list[Case]:
    """One case per DICOM series found anywhere under `root` (each folder scanned by GDCM)."""
    cases = []
    for folder, subfolders, _ in os.walk(root):
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        series_ids = _quiet_series_ids(folder)
        for number, series in enumerate(sorted(series_ids)):
            files = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, series))
            if not files or _is_segmentation(files[0]):
                continue  # a DICOM SEG (e.g. an earlier run's output) is not an image to segment
            relative = Path(folder).relative_to(root)
            name = "_".join(relative.parts) or root.name
            case_id = name if len(series_ids) == 1 else f"{name}_{number + 1}"
            cases.append(Case(case_id, (folder,), files))
    return cases


def _quiet_series_ids(folder: str) -> tuple[str, ...]:
    """GDCM's series ids in `folder`, without ITK's warning for every folder that holds none."""
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        return tuple(sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def _is_segmentation(file: str) -> bool:
    reader = sitk.ImageFileReader()
    reader.SetFileName(file)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return False
    return reader.HasMetaDataKey("0008|0060") and reader.GetMetaData("0008|0060").strip() == "SEG"


def _csv_cases(table: Path) -> list[Case]:
    """Rows of (case id, image, more images...): the first column names the case; relative paths are read
    from the table's folder."""
    try:
        with open(table, newline="", encoding="utf-8-sig") as stream:
            rows = [row for row in csv.reader(stream) if any(cell.strip() for cell in row)]
    except OSError as error:
        raise InputError(f"cannot read {table}: {error.strerror}") from None
    except (UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"cannot read {table}: not a UTF-8 CSV table ({error})") from None
    if not rows or rows[0][0].strip().lower() not in ID_COLUMNS or len(rows[0]) < 2:
        raise InputError(f"{table}: the first row must name the columns: case, then one column per input image "
                         "(e.g. 'case,image' or 'case,t1,t2')")
    width = len(rows[0])
    cases = []
    for number, row in enumerate(rows[1:], start=2):
        cells = [cell.strip() for cell in row]
        if len(cells) != width or not all(cells):
            raise InputError(f"{table}, row {number}: expected {width} non-empty cells (case and "
                             f"{width - 1} image path(s)), found {cells}")
        paths = [str(path if path.is_absolute() else table.parent / path) for path in map(Path, cells[1:])]
        cases.append(Case(cells[0], tuple(paths)))
    if not cases:
        raise InputError(f"{table}: no cases (only the header row)")
    return cases


def _unique(cases: list[Case]) -> list[Case]:
    return [Case(case_id, case.inputs, case.dicom_files)
            for case_id, case in zip(safe_case_ids([case.id for case in cases]), cases)]


def safe_case_ids(names: list[str]) -> list[str]:
    """Case ids from names, safe as file names; a repeated id is numbered (a, a_2, a_3)."""
    seen: dict[str, int] = {}
    ids = []
    for name in names:
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "case"
        case_id = base
        while case_id in seen:
            seen[base] += 1
            case_id = f"{base}_{seen[base]}"
        seen.setdefault(case_id, 1)
        ids.append(case_id)
    return ids
