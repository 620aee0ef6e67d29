"""The `meddl` command line: `meddl segment INPUT OUTPUT [--model M] [--device D]`, `meddl models list`."""

from __future__ import annotations

import argparse
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
    parser = commands.add_parser("models", help="list the catalogued models")
    parser.add_argument("action", choices=["list"])


def _add_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--progress", choices=["bar", "json", "none"], default="bar",
                        help="terminal bar, JSON lines on stdout (the worker protocol), or nothing")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meddl", description="Deep learning for medical images.")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_segment(commands)
    _add_models(commands)
    commands.add_parser("worker", help="serve jobs from JSON lines on stdin (Slicer's background worker)")
    return parser


def _run_segment(args: argparse.Namespace, progress) -> dict:
    from .segment import labels_path_for, segment_file

    result = segment_file(args.input, args.output, args.model, args.device, progress, args.trust_model,
                          compress=not args.no_compress)
    from pathlib import Path

    return {"outputs": {"labels": str(Path(args.output)), "label_table": str(labels_path_for(Path(args.output)))},
            "model": result.card.name}


def _run_models(args: argparse.Namespace, progress) -> dict:
    from .models import catalog

    for model_id in catalog.entry_ids():
        entry = catalog.get_entry(model_id)
        state = "installed" if catalog.is_installed(model_id) else "not installed"
        print(f"{model_id:32} {entry['card']['task']:14} {state:14} {entry['card'].get('title', '')}")
    return {}


COMMANDS = {"segment": _run_segment, "models": _run_models}


def execute(args: argparse.Namespace, progress) -> dict:
    """Run one parsed command; raises MeddlError for problems the user can fix."""
    return COMMANDS[args.command](args, progress)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "worker":
        from .worker import serve

        return serve()
    mode = getattr(args, "progress", "none")
    protocol = JsonLinesProgress() if mode == "json" else None
    progress = protocol or (TerminalProgress() if mode == "bar" else no_progress)
    try:
        summary = execute(args, progress)
    except MeddlError as error:
        if protocol:
            protocol.emit("error", kind=type(error).__name__, message=str(error))
        print(f"meddl: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("meddl: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a bug or an unforeseen failure: still one clear line and a protocol event
        traceback.print_exc()
        if protocol:
            protocol.emit("error", kind="InternalError", message=f"unexpected error: {error!r}")
        print(f"meddl: unexpected error: {error!r}", file=sys.stderr)
        return 1
    if protocol:
        protocol.emit("done", **summary)
    return 0
