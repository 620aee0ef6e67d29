"""`meddl COMMAND ... --server URL`: the same command run by a MedDL server. The parsed arguments become the
command's worker request (the type Slicer sends), which the server client uploads, runs and fetches."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from ..errors import InputError
from ..protocol import Request, Result
from ..server.client import ServerClient
from ..tasks import TASKS
from . import models
from .batch import UsageError
from .options import KEY_VARIABLE

NOT_ARGUMENTS = {"command", "progress", "server", "api_key_file"}


def request_types() -> list[type[Request]]:
    """Every worker request the command line can send."""
    modules = [*(task.commands_module() for task in TASKS.values()), models]
    return [request for module in modules for request in module.REQUESTS]


def request_from_args(args: argparse.Namespace, defaults: dict[str, object]) -> Request:
    """The remote request of a parsed command: its fields from the arguments; an option the request cannot carry
    (given with a value other than its default) is refused rather than dropped."""
    candidates = [kind for kind in request_types() if kind.command == args.command and kind.remote]
    if not candidates or getattr(args, "batch", None):
        raise UsageError(f"--server: `meddl {args.command}`{' --batch' if getattr(args, 'batch', None) else ''} "
                         "runs on this computer only")
    kind = candidates[0]
    values, used = {}, set()
    for field in dataclasses.fields(kind):
        dest = kind.arg_names.get(field.name, field.name)
        if field.name == "compress":
            values["compress"], dest = not args.no_compress, "no_compress"
        elif hasattr(args, dest):
            value = getattr(args, dest)
            values[field.name] = tuple(value) if isinstance(value, list) else value
        used.add(dest)
    left = [name for name, value in vars(args).items()
            if name not in used | NOT_ARGUMENTS and value not in (None, False, [], ()) and value != defaults.get(name)]
    if left:
        options = ", ".join("--" + name.replace("_", "-") for name in left)
        raise UsageError(f"{options}: not available with --server (the server runs `meddl {args.command}` with "
                         f"the options its request carries)")
    return kind(**values)


def api_key(args: argparse.Namespace) -> str:
    """The API key from --api-key-file or $MEDDL_API_KEY (never from the command line, where `ps` shows it)."""
    if args.api_key_file:
        try:
            key = Path(args.api_key_file).read_text(encoding="utf-8").strip()
        except OSError as error:
            raise InputError(f"cannot read --api-key-file {args.api_key_file}: {error.strerror}") from None
    else:
        key = os.environ.get(KEY_VARIABLE, "").strip()
    if not key:
        raise InputError(f"--server needs an API key: set ${KEY_VARIABLE} or give --api-key-file FILE")
    return key


def run_remote(args: argparse.Namespace, defaults: dict[str, object], progress) -> Result:
    """Run the parsed command on the server named by --server and return its result with local paths."""
    request = request_from_args(args, defaults)
    return ServerClient(args.server, api_key(args)).run(request, progress)
