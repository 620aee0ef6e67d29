"""Reading and writing images through SimpleITK, with clear errors and all-or-nothing writes."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk

from .dicom import read_dicom_series, read_series
from .errors import InputError, OutputError, first_line
from .image import Image, check_rectilinear
from .integrity import check_complete
from .outputs import OutputSet, joined

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
    A truncated or corrupt file is an InputError, never a volume padded with zeros.
    """
    path = Path(path)
    try:
        found = path.exists()
    except OSError as error:  # e.g. a name too long for the file system
        raise InputError(f"cannot read {path}: {error.strerror}") from None
    if not found:
        raise InputError(f"input not found: {path}")
    if path.is_dir():
        return image_from_sitk(read_dicom_series(path), str(path))
    if not path.is_file():
        raise InputError(f"cannot read {path}: it is not a regular file (a pipe or a device?)")
    check_complete(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise InputError(f"cannot read image {path}: {first_line(error)}") from None
    if allow_2d and image.GetDimension() == 2:
        image = sitk.JoinSeries(image)
    return image_from_sitk(image, str(path))


def read_dicom_files(files: list[str], source: str | Path) -> Image:
    """A DICOM series from its files in slice order (as `meddl.dicom.series_files` lists them)."""
    return image_from_sitk(read_series(files, source), str(source))


def image_from_sitk(image: sitk.Image, source: str = "image") -> Image:
    """Convert a 3D SimpleITK image (scalar or vector) to an engine image."""
    if image.GetDimension() != 3:
        raise InputError(
            f"{source} is {image.GetDimension()}D (size {image.GetSize()}); a 3D volume is needed"
        )
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    check_rectilinear(direction, source)
    array = sitk.GetArrayFromImage(image)
    return Image(array, image.GetSpacing(), image.GetOrigin(), direction)


def image_to_sitk(image: Image) -> sitk.Image:
    """Convert an engine image to SimpleITK, keeping every geometry field."""
    result = sitk.GetImageFromArray(np.ascontiguousarray(image.array), isVector=image.array.ndim == 4)
    result.SetSpacing(image.spacing)
    result.SetOrigin(image.origin)
    result.SetDirection(tuple(image.direction.ravel()))
    return result


def write_image(image: Image, path: str | Path, compress: bool = True, outputs: Optional[OutputSet] = None) -> Path:
    """Write an image whole or not at all; with `outputs`, staged there and committed with the job's other
    outputs (a header/data pair such as .nhdr + .raw.gz moves as a pair)."""
    path = Path(path)
    if not image_suffix(path):
        raise OutputError(f"unsupported output file type for {path}: use one of {', '.join(IMAGE_SUFFIXES)}")
    with joined(outputs) as staging:
        try:
            sitk.WriteImage(image_to_sitk(image), str(staging.staged(path)), compress)
        except RuntimeError as error:
            raise OutputError(f"cannot write {path}: {first_line(error)}") from None
    return path


def stack_channels_onto(first: Image, others: list[Image]) -> Image:
    """One multi-channel image on `first`'s grid: `first`, then each of `others` resampled onto it (linear
    interpolation, zero outside), in the order given (the model's channel order)."""
    if not others:
        return first
    reference = image_to_sitk(first)
    channels = [first.array.astype(np.float32, copy=False)]
    for other in others:
        if other.array.ndim != 3:
            raise InputError(f"an extra input has {other.channels} channels; give each channel as its own volume")
        if other.same_grid(first):
            channels.append(other.array.astype(np.float32, copy=False))
            continue
        moved = sitk.Resample(image_to_sitk(other.with_array(other.array.astype(np.float32))), reference,
                              sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        channels.append(sitk.GetArrayFromImage(moved))
    return first.with_array(np.stack(channels, axis=-1))
