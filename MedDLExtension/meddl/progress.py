"""Progress reporting: a callback taking a fraction in [0, 1] and a short message."""

from __future__ import annotations

import json
import sys
import time
from typing import Callable, Optional, TextIO

Progress = Callable[[float, str], None]


def no_progress(fraction: float, message: str) -> None:
    """A progress callback that reports nothing."""


def scaled(progress: Optional[Progress], start: float, end: float) -> Progress:
    """A callback that maps a sub-task's 0..1 onto start..end of the parent's progress."""
    report = progress or no_progress
    return lambda fraction, message: report(start + (end - start) * min(max(fraction, 0.0), 1.0), message)


def report_metrics(progress: Progress, fraction: float, message: str, metrics: dict) -> None:
    """Progress with numbers attached (e.g. an epoch's loss and Dice, for a live chart)."""
    with_metrics = getattr(progress, "with_metrics", None)
    if with_metrics:
        with_metrics(fraction, message, metrics)
    else:
        progress(fraction, message)


class JsonLinesProgress:
    """Writes one JSON object a line: the worker protocol read by MedDLLib's job runner."""

    def __init__(self, stream: Optional[TextIO] = None, job: Optional[str] = None) -> None:
        self._stream = stream
        self.job = job

    def emit(self, event: str, **fields: object) -> None:
        stream = self._stream or sys.stdout  # looked up late, so redirection is honoured
        tag = {"job": self.job} if self.job is not None else {}
        stream.write(json.dumps({"event": event, **tag, **fields}) + "\n")
        stream.flush()

    def __call__(self, fraction: float, message: str) -> None:
        self.emit("progress", fraction=round(float(fraction), 4), message=message)

    def with_metrics(self, fraction: float, message: str, metrics: dict) -> None:
        self.emit("progress", fraction=round(float(fraction), 4), message=message, metrics=metrics)


class TerminalProgress:
    """A one-line progress bar on a terminal (stderr), redrawn at most ten times a second."""

    def __init__(self, stream: Optional[TextIO] = None, width: int = 30) -> None:
        self._stream = stream
        self.width = width
        self.last_draw = 0.0
        self.line_open = False

    def __call__(self, fraction: float, message: str) -> None:
        now = time.monotonic()
        if fraction < 1.0 and now - self.last_draw < 0.1:
            return
        self.last_draw = now
        filled = int(round(self.width * fraction))
        bar = "#" * filled + "-" * (self.width - filled)
        stream = self._stream or sys.stderr
        stream.write(f"\r[{bar}] {100 * fraction:5.1f}% {message[:40]:<40}")
        self.line_open = fraction < 1.0
        if not self.line_open:
            stream.write("\n")
        stream.flush()

    def end_line(self) -> None:
        """End an unfinished bar, so that a message printed next starts on its own line."""
        if self.line_open:
            (self._stream or sys.stderr).write("\n")
            self.line_open = False
