"""Running a parsed command and reporting its outcome: the command line and the worker both go through here."""

from __future__ import annotations

import argparse
import sys
import traceback
from typing import Callable

from ..device import select_compute
from ..errors import MeddlError
from ..progress import JsonLinesProgress
from ..protocol import Result
from ..tasks import TASKS, resolve
from . import models, serve
from .parser import command_defaults


def runners() -> dict[str, Callable | str]:
    """Command name -> runner, from every registered task's module, the model library's and the server's; a runner
    named "module:function" is imported when its command runs (the server's: no other command loads it)."""
    table: dict[str, Callable | str] = {**models.RUNNERS, **serve.RUNNERS}
    for task in TASKS.values():
        table.update(task.commands_module().RUNNERS)
    return table


def execute(args: argparse.Namespace, progress) -> Result:
    """Run one parsed command; raises MeddlError for problems the user can fix.

    A requested device is checked first, by every command, so that a wrong one fails before any work; with
    --server, the server's devices count, and the command runs there."""
    if getattr(args, "server", None):
        return resolve("meddl.cli.remote:run_remote")(args, command_defaults(args.command), progress)
    if getattr(args, "device", "auto") not in (None, "auto", "cpu"):
        select_compute(args.device)
    runner = runners()[args.command]
    return (resolve(runner) if isinstance(runner, str) else runner)(args, progress)


def run_reported(args: argparse.Namespace, progress, protocol: JsonLinesProgress | None) -> int:
    """Run a parsed command; report the outcome on stderr and, with a protocol, as a done/error event.

    Returns the exit code.
    """
    try:
        result = execute(args, progress)
    except MeddlError as error:
        return _report_failure(progress, protocol, type(error).__name__, str(error), error.exit_code, f"error: {error}")
    except KeyboardInterrupt:
        return _report_failure(progress, protocol, "Interrupted", "interrupted", 130, "interrupted")
    except Exception as error:  # a bug or an unforeseen failure: still one clear line and a protocol event
        getattr(progress, "end_line", lambda: None)()
        traceback.print_exc()
        message = f"unexpected error: {error!r}"
        return _report_failure(progress, protocol, "InternalError", message, 1, message)
    if protocol:
        protocol.emit("done", **result.as_event())
    return getattr(result, "exit_code", lambda: 0)()  # a cohort with failed cases ran, but not wholly: non-zero


def _report_failure(progress, protocol: JsonLinesProgress | None, kind: str, message: str, code: int,
                    line: str) -> int:
    getattr(progress, "end_line", lambda: None)()  # the error starts its own line, not the bar's
    if protocol:
        protocol.emit("error", kind=kind, message=message, exit_code=code)
    print(f"meddl: {line}", file=sys.stderr)
    return code
