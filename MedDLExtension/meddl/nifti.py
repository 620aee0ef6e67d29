"""A completeness check for NIfTI files, which ITK reads even when cut short (the missing voxels become zeros)."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

from .errors import InputError

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
