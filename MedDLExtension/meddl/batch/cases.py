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
from dataclasses import dataclass, replace
from pathlib import Path

import SimpleITK as sitk

from ..dicom import MODALITY, read_tags
from ..errors import InputError, first_line
from ..image import Image
from ..io import IMAGE_SUFFIXES, image_suffix, read_dicom_files, read_image

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")  # 2D images a classifier takes
ID_COLUMNS = ("case", "id", "case_id")
MAX_ID = 100  # characters of a case id (its outputs add a suffix such as "_saliency.nii.gz"; 255 bytes a name)
WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"{name}{digit}" for name in ("com", "lpt") for digit in "123456789")}


@dataclass(frozen=True)
class Case:
    """One case: `inputs` are image files or DICOM folders (first the main image, then extra channels);
    `dicom_files` are a DICOM case's series files in slice order; `problem`, why a folder found while looking
    for cases cannot be read (the case fails with it, the others run)."""

    id: str
    inputs: tuple[str, ...]
    dicom_files: tuple[str, ...] = ()
    problem: str = ""

    def read(self, allow_2d: bool = False) -> list[Image]:
        """The case's images, the main one first."""
        if self.problem:
            raise InputError(self.problem)
        if self.dicom_files:
            return [read_dicom_files(list(self.dicom_files), self.inputs[0])]
        return [read_image(path, allow_2d=allow_2d) for path in self.inputs]


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
    try:
        files = sorted(path for path in source.iterdir() if path.is_file() and _has_suffix(path, suffixes))
    except OSError as error:
        raise InputError(f"--batch {source}: cannot read the folder ({error.strerror or error})") from None
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
        name = "_".join(Path(folder).relative_to(root).parts) or root.name
        try:
            series_ids = _quiet_series_ids(folder)
            found = [tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, series))
                     for series in sorted(series_ids)]
        except RuntimeError as error:  # GDCM gives up on the whole folder for one file it cannot parse
            problem = (f"cannot look for DICOM series in folder {folder}: GDCM fails on one of its files "
                       f"({first_line(error)}); move that file out of the folder")
            cases.append(Case(name, (folder,), problem=problem))
            continue
        for number, files in enumerate(found):
            if not files or _is_segmentation(files[0]):
                continue  # a DICOM SEG (e.g. an earlier run's output) is not an image to segment
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
    try:
        return read_tags(file, (MODALITY,)).get(MODALITY) == "SEG"
    except InputError:  # a file GDCM listed but cannot read is the series reader's to report
        return False


def _csv_cases(table: Path) -> list[Case]:
    """Rows of (case id, image, more images...): the first column names the case; relative paths are read
    from the table's folder."""
    try:
        with open(table, newline="", encoding="utf-8-sig") as stream:
            reader = csv.reader(stream)  # rows with their line numbers in the file (blank lines skipped)
            rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    except OSError as error:
        raise InputError(f"cannot read {table}: {error.strerror}") from None
    except (UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"cannot read {table}: not a UTF-8 CSV table ({error})") from None
    if not rows or rows[0][1][0].strip().lower() not in ID_COLUMNS or len(rows[0][1]) < 2:
        raise InputError(f"{table}: the first row must name the columns: case, then one column per input image "
                         "(e.g. 'case,image' or 'case,t1,t2')")
    width = len(rows[0][1])
    cases = []
    for number, row in rows[1:]:
        cells = [cell.strip() for cell in row]
        if len(cells) != width or not all(cells):
            raise InputError(f"{table}, line {number}: expected {width} non-empty cells (case and "
                             f"{width - 1} image path(s)), found {cells}")
        paths = [str(path if path.is_absolute() else table.parent / path) for path in map(Path, cells[1:])]
        cases.append(Case(cells[0], tuple(paths)))
    if not cases:
        raise InputError(f"{table}: no cases (only the header row)")
    return cases


def _unique(cases: list[Case]) -> list[Case]:
    return [replace(case, id=case_id) for case_id, case in zip(safe_case_ids([case.id for case in cases]), cases)]


def safe_case_ids(names: list[str]) -> list[str]:
    """Case ids from names, safe as file names on every system: other characters than letters, digits, '.',
    '-' and '_' replaced, at most MAX_ID characters, not a name Windows reserves (CON, NUL, COM1, ...), and
    unique also where file names ignore case. A repeated id is numbered (a, a_2, a_3), skipping the ids other
    names already give; ids that are already safe and unique stay as they are."""
    bases = [_safe_name(name) for name in names]
    taken = {base.casefold() for base in bases}
    seen: set[str] = set()
    ids = []
    for base in bases:
        case_id, number = base, 1
        while case_id.casefold() in seen or (number > 1 and case_id.casefold() in taken):
            number += 1
            case_id = f"{base}_{number}"
        seen.add(case_id.casefold())
        ids.append(case_id)
    return ids


def _safe_name(name: str) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:MAX_ID].rstrip("._") or "case"
    stem, dot, rest = base.partition(".")  # Windows reserves CON and CON.anything
    return f"{stem}_{dot}{rest}" if stem.casefold() in WINDOWS_RESERVED else base
