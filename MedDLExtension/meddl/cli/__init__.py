"""The `meddl` command line: `meddl segment INPUT OUTPUT`, `meddl classify ...`, `meddl models list`, ...

Each task's commands live in this package, one module per task (the task registry names it), with
the worker requests that run them; `meddl worker` serves the same commands as JSON-lines jobs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from ..progress import JsonLinesProgress, TerminalProgress, no_progress
from .parser import build_parser
from .reporting import run_reported
from .worker import serve


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "worker":
        return serve()
    mode = getattr(args, "progress", "none")
    if int(os.environ.get("RANK", "0")) != 0:
        mode = "none"  # under torchrun, rank 0 reports for all processes
    protocol = JsonLinesProgress() if mode == "json" else None
    progress = protocol or (TerminalProgress() if mode == "bar" else no_progress)
    return run_reported(args, progress, protocol)


__all__ = ["build_parser", "main", "run_reported"]
