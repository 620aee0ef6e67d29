"""Reading and writing images through SimpleITK, with clear errors and all-or-nothing writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError, OutputError
from .files import atomic_path
from .image import Image

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def image_suffix(path: str | Path) -> str:
    name = Path(path).name.lower()
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return ""


def read_image(path: str | Path, allow_2d: bool = False) -> Image:
    """Read a NIfTI/NRRD/MetaImage file or a folder holding one DICOM series.

    With `allow_2d`, a 2D picture (PNG, JPEG, a single-frame DICOM) becomes a one-slice volume:
    array (1, rows, columns[, channels]) with row 0 at the top, as the picture is shown.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"input not found: {path}")
    if path.is_dir():
        return image_from_sitk(_read_dicom_series(path), str(path))
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise InputError(f"cannot read image {path}: {_first_line(error)}") from None
    if allow_2d and image.GetDimension() == 2:
        image = sitk.JoinSeries(image)
    return image_from_sitk(image, str(path))


def _read_dicom_series(folder: Path) -> sitk.Image:
    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series_ids:
        raise InputError(f"no DICOM series found in folder {folder}")
    files_per_series = {
        series: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series) for series in series_ids
    }
    files = max(files_per_series.values(), key=len)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        return reader.Execute()
    except RuntimeError as error:
        raise InputError(f"cannot read the DICOM series in {folder}: {_first_line(error)}") from None


def image_from_sitk(image: sitk.Image, source: str = "image") -> Image:
    """Convert a 3D SimpleITK image (scalar or vector) to an engine image."""
    if image.GetDimension() != 3:
        raise InputError(
            f"{source} is {image.GetDimension()}D (size {image.GetSize()}); a 3D volume is needed"
        )
    array = sitk.GetArrayFromImage(image)
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    return Image(array, image.GetSpacing(), image.GetOrigin(), direction)


def image_to_sitk(image: Image) -> sitk.Image:
    """Convert an engine image to SimpleITK, keeping every geometry field."""
    result = sitk.GetImageFromArray(np.ascontiguousarray(image.array), isVector=image.array.ndim == 4)
    result.SetSpacing(image.spacing)
    result.SetOrigin(image.origin)
    result.SetDirection(tuple(image.direction.ravel()))
    return result


def write_image(image: Image, path: str | Path, compress: bool = True) -> Path:
    """Write an image whole or not at all (a temporary file renamed into place)."""
    path = Path(path)
    suffix = image_suffix(path)
    if not suffix:
        raise OutputError(f"unsupported output file type for {path}: use one of {', '.join(IMAGE_SUFFIXES)}")
    with atomic_path(path, suffix) as temporary:
        try:
            sitk.WriteImage(image_to_sitk(image), str(temporary), compress)
        except RuntimeError as error:
            raise OutputError(f"cannot write {path}: {_first_line(error)}") from None
    return path


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # ITK puts the useful sentence after the file/line location lines
    useful = [line for line in lines if not line.startswith(("/", "itk::", "ITK ERROR"))]
    return (useful or lines or ["unknown error"])[-1]
