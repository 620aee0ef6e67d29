"""Errors the engine raises on purpose, each mapped to its own command-line exit code."""

from __future__ import annotations


class MeddlError(Exception):
    """Base class: a problem the user can fix, reported without a traceback."""

    exit_code = 1


class InputError(MeddlError):
    """The input image is missing, unreadable or unsuitable for the task."""

    exit_code = 3


class ModelError(MeddlError):
    """The model file or its card is missing, corrupt, untrusted or inconsistent."""

    exit_code = 4


class OutputError(MeddlError):
    """An output cannot be written where it was asked for."""

    exit_code = 5


class DeviceError(MeddlError):
    """The requested compute device is not available."""

    exit_code = 6


def first_line(error: Exception) -> str:
    """The useful sentence of a library's error message (ITK's comes after file and line locations)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # ITK puts the useful sentence after the file/line location lines
    useful = [line for line in lines if not line.startswith(("/", "itk::", "ITK ERROR"))]
    return (useful or lines or ["unknown error"])[-1]
