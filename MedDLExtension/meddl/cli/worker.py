"""`meddl worker`: a long-lived engine process that runs jobs sent as JSON lines on stdin.

Each request is {"job": ID, "argv": ["segment", ...]}; the answer is the usual JSON-lines events
(progress, then done or error), each tagged with the job's ID. Loaded models stay in memory
between jobs, so a second segmentation starts without re-importing torch or re-reading weights.
The process ends at end of input; cancelling a job means killing the process.

Stdout carries only the protocol: whatever a command prints goes to stderr. As each job starts, the
worker writes `JOB_MARKER + ID` on stderr, so a client can tell which job wrote which stderr lines.
A line that is not a request (not a JSON object with "argv", a list of strings) is answered with an
error event of kind "ProtocolError" (exit_code 2) and the worker serves the next line.

{"job": ID, "release": [PATH, ...]} is no command: it drops the remembered interactive sessions (`interact`) that
read one of those files, when a server closes a session, and answers done with {"released": N}.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from typing import Any, Optional

from ..errors import MeddlError
from ..progress import JsonLinesProgress
from ..protocol import JOB_MARKER
from . import interact
from .parser import build_parser
from .reporting import run_reported

MODEL_CACHE_SIZE = 2


class ArgumentError(MeddlError):
    """A request whose arguments the command line would refuse."""

    exit_code = 2


class ProtocolError(MeddlError):
    """A line that is not a request: {"job": ID, "argv": [strings]}."""

    exit_code = 2


def _job_tag(request: Any) -> Optional[str]:
    """The job id events are tagged with: a string (or an integer, as its text); None when there is none."""
    job = request.get("job") if isinstance(request, dict) else None
    if job is None or isinstance(job, str):
        return job
    if isinstance(job, int) and not isinstance(job, bool):
        return str(job)
    raise ProtocolError(f'"job" must be a string, not {type(job).__name__}')


def _argv(request: Any) -> list[str]:
    if not isinstance(request, dict):
        raise ProtocolError(f'a request is a JSON object {{"job": ID, "argv": [...]}}, not {type(request).__name__}')
    if "argv" not in request:
        raise ProtocolError('the request has no "argv" (the command line as a list of strings)')
    argv = request["argv"]
    if not isinstance(argv, list) or not all(isinstance(item, str) for item in argv):
        raise ProtocolError('"argv" must be a list of strings')
    for item in argv:  # what a real command line can hold: no NUL, text the file system can encode
        try:
            if "\0" in item:
                raise ValueError
            os.fsencode(item)
        except (UnicodeError, ValueError):
            raise ProtocolError(f'"argv" holds {item[:40]!r}, which no command line can hold') from None
    return argv


def _parse(argv: list[str]):
    """Parse like the command line, turning argparse's exit into an ArgumentError with its message."""
    messages = io.StringIO()
    try:
        with contextlib.redirect_stderr(messages), contextlib.redirect_stdout(messages):
            return build_parser().parse_args(argv)
    except SystemExit:
        lines = messages.getvalue().strip().splitlines()
        raise ArgumentError(lines[-1] if lines else "bad arguments") from None
    except Exception as error:  # argparse itself failing on odd input: still an answer, not a dead worker
        raise ArgumentError(f"bad arguments: {error}") from None


def handle(request: Any, protocol: JsonLinesProgress) -> None:
    """Run one request and emit its done or error event; one bad job must not take the worker down."""
    if getattr(protocol, "_stream", None) is None:  # bind the protocol to stdout before stdout is redirected
        protocol = JsonLinesProgress(sys.stdout, protocol.job)
    print(f"{JOB_MARKER}{protocol.job}", file=sys.stderr, flush=True)
    try:
        args = _parse(_argv(request))
        if args.command in ("worker", "serve", "serve-key"):
            raise ArgumentError(f"a worker runs jobs; it does not start `meddl {args.command}`")
        if getattr(args, "server", None):
            raise ArgumentError("a worker runs jobs itself; --server is for the command line and Slicer")
    except MeddlError as error:
        protocol.emit("error", kind=type(error).__name__, message=str(error), exit_code=error.exit_code)
        return
    try:
        with contextlib.redirect_stdout(sys.stderr):  # stdout is the protocol: prints go to stderr
            run_reported(args, protocol, protocol)
    except SystemExit as error:  # a command that exits instead of raising
        protocol.emit("error", kind="InternalError", message=f"the command exited ({error.code})", exit_code=1)


def release(request: dict, protocol: JsonLinesProgress) -> None:
    """Drop the interactive sessions reading the files a release message lists."""
    files = request["release"]
    if not isinstance(files, list) or not all(isinstance(item, str) for item in files):
        protocol.emit("error", kind="ProtocolError", message='"release" must be a list of file paths', exit_code=2)
        return
    protocol.emit("done", released=interact.release(files))


def serve(stdin=None, stdout=None) -> int:
    """Serve requests from `stdin` (default: this process's) until it ends; events go to `stdout`."""
    from ..models import loading  # loads torch: the worker's first job would anyway

    out = stdout or sys.stdout  # looked up now: inside a job, sys.stdout is redirected to stderr
    if stdin is None:
        stdin = sys.stdin
        with contextlib.suppress(AttributeError, ValueError, io.UnsupportedOperation):
            stdin.reconfigure(errors="replace")  # bytes that are not UTF-8 make a bad request, not a dead worker
    loading.set_model_cache_size(MODEL_CACHE_SIZE)
    JsonLinesProgress(out).emit("ready")
    for line in stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            job = _job_tag(request)
        except (ValueError, RecursionError, ProtocolError) as error:
            message = str(error) if isinstance(error, ProtocolError) else f"not a JSON request: {line[:80]!r}"
            JsonLinesProgress(out).emit("error", kind="ProtocolError", message=message, exit_code=2)
            continue
        protocol = JsonLinesProgress(out, job=job)
        try:
            if isinstance(request, dict) and "release" in request:
                release(request, protocol)
            else:
                handle(request, protocol)
        except Exception as error:  # a bug: still one answer, and the worker goes on
            protocol.emit("error", kind="InternalError", message=f"unexpected error: {error!r}", exit_code=1)
    return 0
