"""Reading a DICOM series from a folder: exactly one series, complete, on uniformly spaced slices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError, first_line

POSITION, ORIENTATION, DESCRIPTION, MODALITY = "0020|0032", "0020|0037", "0008|103e", "0008|0060"


def read_tags(file: str, keys: tuple[str, ...]) -> dict[str, str]:
    """The DICOM tags `keys` ("gggg|eeee") of one file's header, stripped; missing ones are left out."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(file)
    reader.LoadPrivateTagsOff()
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise InputError(f"cannot read the DICOM file {file}: it is corrupt") from None
    return {key: reader.GetMetaData(key).strip() for key in keys if reader.HasMetaDataKey(key)}


def _numbers(text: str) -> np.ndarray | None:
    try:
        return np.array([float(part) for part in text.split("\\")])
    except ValueError:
        return None


def check_uniform_slices(files: list[str], folder: Path) -> None:
    """Refuse a series whose slice positions are not evenly spaced (a missing slice, a duplicate, a gap)."""
    if len(files) < 3:
        return
    tags = [read_tags(file, (POSITION, ORIENTATION)) for file in files]
    positions = [_numbers(tag.get(POSITION, "")) for tag in tags]
    orientation = _numbers(tags[0].get(ORIENTATION, ""))
    if orientation is None or len(orientation) != 6 or any(p is None or len(p) != 3 for p in positions):
        return  # no per-slice geometry (e.g. one multi-frame file): nothing to compare
    normal = np.cross(orientation[:3], orientation[3:])
    depth = np.sort(np.array(positions) @ normal)
    steps = np.diff(depth)
    typical = float(np.median(steps))
    if typical <= 0 or np.any(np.abs(steps - typical) > max(0.01, 0.01 * typical)):
        worst = float(steps[np.argmax(np.abs(steps - typical))])
        raise InputError(f"the DICOM series in {folder} is incomplete or unevenly spaced: slices are "
                         f"{typical:.3g} mm apart but one step is {worst:.3g} mm (a missing, duplicate or "
                         "corrupt slice?); it was not read")


def _describe(series: str, files: list[str]) -> str:
    description = read_tags(files[0], (DESCRIPTION,)).get(DESCRIPTION, "no description")
    return f"{series} ({description}, {len(files)} files)"


def series_files(folder: str | Path) -> list[str]:
    """The files of the one DICOM series in `folder`, in GDCM's order: file i is slice (z index) i of the image
    `read_dicom_series` reads. Several series are named, not guessed."""
    folder = Path(folder)
    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series_ids:
        raise InputError(f"no DICOM series found in folder {folder}")
    files_per_series = {
        series: list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series)) for series in series_ids
    }
    if len(files_per_series) > 1:
        listed = "; ".join(_describe(series, files) for series, files in files_per_series.items())
        raise InputError(f"folder {folder} holds {len(files_per_series)} DICOM series: {listed}. "
                         "Put the one to use in a folder of its own")
    return next(iter(files_per_series.values()))


def read_dicom_series(folder: Path) -> sitk.Image:
    """The one DICOM series in `folder`, checked for missing slices; several series are named, not guessed."""
    return read_series(series_files(folder), folder)


def read_series(files: list[str], source: str | Path) -> sitk.Image:
    """A DICOM series from its files (in slice order, as GDCM lists them), checked for missing slices."""
    check_uniform_slices(files, Path(source))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        return reader.Execute()
    except RuntimeError as error:
        raise InputError(f"cannot read the DICOM series in {source}: {first_line(error)}") from None
