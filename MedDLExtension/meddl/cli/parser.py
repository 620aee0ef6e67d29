"""The `meddl` argument parser, built from the task registry: each task's module adds its commands."""

from __future__ import annotations

import argparse

from ..tasks import TASKS
from . import models, serve


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meddl", description="Deep learning for medical images.")
    commands = parser.add_subparsers(dest="command", required=True)
    for task in TASKS.values():
        task.commands_module().add_commands(commands)
    models.add_commands(commands)
    serve.add_commands(commands)
    commands.add_parser("worker", help="serve jobs from JSON lines on stdin (Slicer's background worker)")
    return parser


def command_defaults(command: str) -> dict[str, object]:
    """Each option's default for `command` (what `--server` compares the given options against)."""
    subparsers = build_parser()._subparsers._group_actions[0]  # argparse keeps its subparsers here
    return {action.dest: action.default for action in subparsers.choices[command]._actions}
