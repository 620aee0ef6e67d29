"""`meddl worker`: a long-lived engine process that runs jobs sent as JSON lines on stdin.

Each request is {"job": ID, "argv": ["segment", ...]}; the answer is the usual JSON-lines events
(progress, then done or error), each tagged with the job's ID. Loaded models stay in memory
between jobs, so a second segmentation starts without re-importing torch or re-reading weights.
The process ends at end of input; cancelling a job means killing the process.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys

from ..errors import MeddlError
from ..progress import JsonLinesProgress
from .parser import build_parser
from .reporting import run_reported

MODEL_CACHE_SIZE = 2


class ArgumentError(MeddlError):
    """A request whose arguments the command line would refuse."""

    exit_code = 2


def _parse(argv: list[str]):
    """Parse like the command line, turning argparse's exit into an ArgumentError with its message."""
    messages = io.StringIO()
    try:
        with contextlib.redirect_stderr(messages), contextlib.redirect_stdout(messages):
            return build_parser().parse_args(argv)
    except SystemExit:
        lines = messages.getvalue().strip().splitlines()
        raise ArgumentError(lines[-1] if lines else "bad arguments") from None


def handle(request: dict, protocol: JsonLinesProgress) -> None:
    """Run one request and emit its done or error event; one bad job must not take the worker down."""
    try:
        args = _parse(list(request["argv"]))
        if args.command == "worker":
            raise ArgumentError("a worker cannot start another worker")
    except MeddlError as error:
        protocol.emit("error", kind=type(error).__name__, message=str(error), exit_code=error.exit_code)
        return
    run_reported(args, protocol, protocol)


def serve(stdin=None) -> int:
    from ..models import loading  # loads torch: the worker's first job would anyway

    loading.set_model_cache_size(MODEL_CACHE_SIZE)
    JsonLinesProgress().emit("ready")
    for line in stdin or sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
        except json.JSONDecodeError:
            JsonLinesProgress().emit("error", kind="ProtocolError", message=f"not a JSON request: {line[:80]!r}")
            continue
        handle(request, JsonLinesProgress(job=str(request.get("job"))))
    return 0
