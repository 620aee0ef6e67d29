"""Completeness checks ITK does not make: it reads a NIfTI file cut short (the missing voxels become zeros) and
corrupt zlib/gzip data in NRRD and MetaImage files (printing "Uncompress failed" and going on)."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

from .errors import InputError
from .outputs import data_files_of

CHUNK = 1 << 22
# (header size, offset and format of dim[8], of bitpix, of vox_offset) for NIfTI-1 and NIfTI-2
LAYOUTS = {348: (40, "8h", 72, "h", 108, "f"), 540: (16, "8q", 14, "h", 168, "q")}


def _expected_end(header: bytes, path: Path) -> int:
    """The byte offset at which the voxel data ends, from the header."""
    for order in "<>":
        size = struct.unpack(order + "i", header[:4])[0]
        if size in LAYOUTS:
            dim_at, dim_format, bitpix_at, bitpix_format, offset_at, offset_format = LAYOUTS[size]
            dims = struct.unpack_from(order + dim_format, header, dim_at)
            bitpix = struct.unpack_from(order + bitpix_format, header, bitpix_at)[0]
            vox_offset = int(struct.unpack_from(order + offset_format, header, offset_at)[0])
            count = 1
            for extent in dims[1 : 1 + max(0, min(int(dims[0]), 7))]:
                count *= max(int(extent), 1)
            return max(vox_offset, size) + count * max(int(bitpix), 0) // 8
    raise InputError(f"cannot read image {path}: not a NIfTI file (bad header size)")


def check_nifti_complete(path: Path) -> None:
    """Raise InputError when a .nii/.nii.gz file holds fewer voxel bytes than its header promises, or its
    compressed stream is truncated or corrupt (checked to the end, CRC included)."""
    try:
        if path.name.lower().endswith(".gz"):
            with gzip.open(path, "rb") as stream:
                header = stream.read(544)
                length = len(header)
                while block := stream.read(CHUNK):
                    length += len(block)
        else:
            with open(path, "rb") as stream:
                header = stream.read(544)
            length = path.stat().st_size
    except (EOFError, OSError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
        raise InputError(f"cannot read image {path}: the compressed data is truncated or corrupt ({error})") \
            from None
    if len(header) < 348:
        raise InputError(f"cannot read image {path}: the file is too short to be NIfTI")
    expected = _expected_end(header, path)
    if length < expected:
        raise InputError(f"cannot read image {path}: the file is truncated ({length} of {expected} bytes); "
                         "copy or download it again")


def _check_stream(path: Path, offset: int, kind: str) -> None:
    """Decompress `path` from `offset` to its end ('gzip' or 'zlib'); raise InputError if it is cut or corrupt."""
    try:
        with open(path, "rb") as stream:
            stream.seek(offset)
            if kind == "gzip":
                with gzip.GzipFile(fileobj=stream) as unpacked:
                    while unpacked.read(CHUNK):
                        pass
                return
            inflater = zlib.decompressobj()
            while block := stream.read(CHUNK):
                inflater.decompress(block, CHUNK)
                while inflater.unconsumed_tail:
                    inflater.decompress(inflater.unconsumed_tail, CHUNK)
            if not inflater.eof:
                raise EOFError("the compressed stream ends early")
    except (EOFError, OSError, zlib.error) as error:
        raise InputError(f"cannot read image {path}: the compressed data is truncated or corrupt ({error})") \
            from None


def _header(path: Path, end: bytes) -> tuple[bytes, int]:
    """The header text of an attached NRRD/MetaImage file and the offset of its data."""
    with open(path, "rb") as stream:
        start = stream.read(65536)
    at = start.find(end)
    return (start, len(start)) if at < 0 else (start[: at + len(end)], at + len(end))


def _field(header: bytes, name: bytes, separator: bytes) -> str:
    for line in header.splitlines():
        key, found, value = line.partition(separator)
        if found and key.strip().lower() == name.lower():
            return value.strip().decode("utf-8", "replace").lower()
    return ""


def check_complete(path: Path) -> None:
    """Raise InputError when an image file, or the data file its header names, is not a whole regular file with
    intact compressed data (NIfTI, NRRD/NHDR with gzip encoding, MetaImage with CompressedData)."""
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        check_nifti_complete(path)
        return
    if not name.endswith((".nrrd", ".nhdr", ".mha", ".mhd")):
        return
    meta = name.endswith((".mha", ".mhd"))
    header, offset = _header(path, b"ElementDataFile = LOCAL\n" if meta else b"\n\n")
    compressed = _field(header, b"CompressedData", b"=") == "true" if meta else \
        _field(header, b"encoding", b":") in ("gzip", "gz")
    data_files = data_files_of(path) if name.endswith((".nhdr", ".mhd")) or b"data file" in header.lower() or \
        (meta and b"ElementDataFile = LOCAL" not in header) else []
    for data in data_files:
        if not data.is_file():
            raise InputError(f"cannot read image {path}: its data file {data.name} is missing or not a regular file")
        if compressed:
            _check_stream(data, 0, "zlib" if meta else "gzip")
    if compressed and not data_files:
        _check_stream(path, offset, "zlib" if meta else "gzip")
