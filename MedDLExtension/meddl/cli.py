"""The `meddl` command line: `meddl segment INPUT OUTPUT [--model M] [--device D]`, `meddl models list`."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Sequence

from .device import DEVICE_CHOICES
from .errors import MeddlError
from .progress import JsonLinesProgress, TerminalProgress, no_progress


def _add_segment(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("segment", help="segment a volume into a label map",
                                 description="Segment a NIfTI/NRRD/MHA file or DICOM folder into a label map.")
    parser.add_argument("input", help="image file or DICOM folder")
    parser.add_argument("output", help="label map file (.nii.gz, .nrrd, .mha); a .labels.json names its labels")
    parser.add_argument("--model", default=None, help="catalog id, model file or MONAI bundle folder "
                        "(default: the catalog's default segmentation model)")
    parser.add_argument("--device", default="auto", help=f"one of {', '.join(DEVICE_CHOICES)} or cuda:N")
    parser.add_argument("--no-compress", action="store_true",
                        help="write the label map uncompressed (faster; used by Slicer's background worker)")
    parser.add_argument("--trust-model", action="store_true",
                        help="allow a model that needs arbitrary code to load (only for sources you trust)")
    _add_progress(parser)


def _add_models(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("models", help="the model library: list, info, install, import, remove")
    actions = parser.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="every model MedDL knows, with filters")
    listing.add_argument("--search", default="", help="text in the id, title or description")
    listing.add_argument("--task", default="")
    listing.add_argument("--modality", default="")
    listing.add_argument("--body-part", default="")
    listing.add_argument("--installed", action="store_true", help="only models ready to run")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    info = actions.add_parser("info", help="everything about one model")
    info.add_argument("id")
    install = actions.add_parser("install", help="download, verify and install a catalogued model")
    install.add_argument("id")
    install.add_argument("--trust-model", action="store_true", help="allow its executable config expressions")
    _add_progress(install)
    imported = actions.add_parser("import", help="add a bundle folder/zip, TorchScript file or checkpoint")
    imported.add_argument("path")
    imported.add_argument("--id", default=None, help="library id (default: from the card or file name)")
    for field in ("name", "title", "task", "license", "modality", "description"):
        imported.add_argument(f"--{field}", default=None, help=f"card field '{field}' if the card lacks it")
    imported.add_argument("--channels", type=int, default=None, help="input channels")
    imported.add_argument("--labels", default=None, help="labels as '1:Liver,2:Spleen'")
    imported.add_argument("--roi", default=None, help="patch size as '96,96,96'")
    imported.add_argument("--trust-model", action="store_true")
    remove = actions.add_parser("remove", help="delete an installed model and free its disk space")
    remove.add_argument("id")


def _add_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--progress", choices=["bar", "json", "none"], default="bar",
                        help="terminal bar, JSON lines on stdout (the worker protocol), or nothing")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meddl", description="Deep learning for medical images.")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_segment(commands)
    _add_models(commands)
    from . import enhance_cli, register_cli, train_cli
    from .classify_cli import add_commands

    add_commands(commands, _add_progress)
    train_cli.add_command(commands, _add_progress)
    enhance_cli.add_command(commands, _add_progress)
    register_cli.add_command(commands, _add_progress)
    commands.add_parser("worker", help="serve jobs from JSON lines on stdin (Slicer's background worker)")
    return parser


def _run_segment(args: argparse.Namespace, progress) -> dict:
    from .segment import labels_path_for, segment_file

    result = segment_file(args.input, args.output, args.model, args.device, progress, args.trust_model,
                          compress=not args.no_compress)
    from pathlib import Path

    return {"outputs": {"labels": str(Path(args.output)), "label_table": str(labels_path_for(Path(args.output)))},
            "model": result.card.name}


def _lazy(module: str, function: str):
    """A command runner that imports its module only when the command runs (start-up stays fast)."""

    def run(args: argparse.Namespace, progress) -> dict:
        return getattr(importlib.import_module(f"meddl.{module}"), function)(args, progress)

    return run


COMMANDS = {"segment": _run_segment, "models": _lazy("library.commands", "run"),
            "classify": _lazy("classify_cli", "run_classify"), "train-classifier": _lazy("classify_cli", "run_train"),
            "train": _lazy("train_cli", "run_train"), "enhance": _lazy("enhance_cli", "run_enhance"),
            "register": _lazy("register_cli", "run_register"),
            "train-registration": _lazy("register_cli", "run_train_registration")}


def execute(args: argparse.Namespace, progress) -> dict:
    """Run one parsed command; raises MeddlError for problems the user can fix."""
    return COMMANDS[args.command](args, progress)


def run_reported(args: argparse.Namespace, progress, protocol: JsonLinesProgress | None) -> int:
    """Run a parsed command; report the outcome on stderr and, with a protocol, as a done/error event.

    Returns the exit code. The command line and the long-lived worker both report through here.
    """
    try:
        summary = execute(args, progress)
    except MeddlError as error:
        return _report_failure(protocol, type(error).__name__, str(error), error.exit_code, f"error: {error}")
    except KeyboardInterrupt:
        return _report_failure(protocol, "Interrupted", "interrupted", 130, "interrupted")
    except Exception as error:  # a bug or an unforeseen failure: still one clear line and a protocol event
        traceback.print_exc()
        message = f"unexpected error: {error!r}"
        return _report_failure(protocol, "InternalError", message, 1, message)
    if protocol:
        protocol.emit("done", **summary)
    return 0


def _report_failure(protocol: JsonLinesProgress | None, kind: str, message: str, code: int, line: str) -> int:
    if protocol:
        protocol.emit("error", kind=kind, message=message, exit_code=code)
    print(f"meddl: {line}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "worker":
        from .worker import serve

        return serve()
    mode = getattr(args, "progress", "none")
    if int(os.environ.get("RANK", "0")) != 0:
        mode = "none"  # under torchrun, rank 0 reports for all processes
    protocol = JsonLinesProgress() if mode == "json" else None
    progress = protocol or (TerminalProgress() if mode == "bar" else no_progress)
    return run_reported(args, progress, protocol)
