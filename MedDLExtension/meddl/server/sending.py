"""What a client sends to a server for one local input: the file itself when the server takes it as it is, or
a temporary file made for it (a zip of a folder such as a DICOM series, of a model file and its card; a
self-contained copy of a header image whose data is in another file). The caller removes the temporary files.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import zipfile
from pathlib import Path

from ..errors import InputError, first_line
from ..models.formats import MODEL_SUFFIXES, card_path_for
from .uploads import HEADER_CHECKED, SUFFIXES, check_image_header, suffix_of


def upload_source(path: Path, temporary: list[Path]) -> tuple[Path, str]:
    """What to upload for a local input (a file, or a zip made of a folder or of a model file and its card)
    and its suffix."""
    if path.is_dir():
        return _zip(temporary, [(path, "")], top=re.sub(r"[^A-Za-z0-9._-]", "_", path.name) or "folder"), ".zip"
    if path.suffix.lower() in MODEL_SUFFIXES:
        card = card_path_for(path)
        return _zip(temporary, [(path, path.name), *([(card, card.name)] if card.is_file() else [])]), ".zip"
    suffix = suffix_of(path.name)
    if suffix in HEADER_CHECKED:
        try:
            check_image_header(path)
        except InputError:  # its data is in another file: send one self-contained copy
            return _self_contained(path, suffix, temporary), suffix.replace(".nhdr", ".nrrd").replace(".mhd", ".mha")
    if not suffix:
        if not _is_dicom_file(path):
            raise InputError(f"{path}: a server accepts files of the types {' '.join(SUFFIXES)}, or folders")
        suffix = ".dcm"
    return path, suffix


def _self_contained(path: Path, suffix: str, temporary: list[Path]) -> Path:
    import SimpleITK as sitk

    descriptor, name = tempfile.mkstemp(suffix=suffix.replace(".nhdr", ".nrrd").replace(".mhd", ".mha"),
                                        prefix="meddl-upload-")
    os.close(descriptor)
    temporary.append(Path(name))
    try:
        sitk.WriteImage(sitk.ReadImage(str(path)), name, True)
    except RuntimeError as error:
        raise InputError(f"cannot read image {path}: {first_line(error)}") from None
    return Path(name)


def _zip(temporary: list[Path], items: list[tuple[Path, str]], top: str = "") -> Path:
    descriptor, name = tempfile.mkstemp(suffix=".zip", prefix="meddl-upload-")
    temporary.append(Path(name))
    with os.fdopen(descriptor, "wb") as stream, zipfile.ZipFile(stream, "w", zipfile.ZIP_DEFLATED,
                                                                compresslevel=1) as archive:
        for source, member in items:
            if source.is_dir():
                for path in sorted(source.rglob("*")):
                    if path.is_file():
                        archive.write(path, "/".join(filter(None, (top, path.relative_to(source).as_posix()))))
            else:
                archive.write(source, "/".join(filter(None, (top, member))))
    return Path(name)


def _is_dicom_file(path: Path) -> bool:
    with contextlib.suppress(OSError), open(path, "rb") as stream:
        stream.seek(128)
        return stream.read(4) == b"DICM"
    return False
