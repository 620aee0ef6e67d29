"""Options that every command shares, added the same way everywhere."""

from __future__ import annotations

import argparse

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def add_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--progress", choices=["bar", "json", "none"], default="bar",
                        help="terminal bar, JSON lines on stdout (the worker protocol), or nothing")


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto",
                        help=f"one of {', '.join(DEVICE_CHOICES)} or cuda:N (auto: CUDA, then Apple MPS, then CPU)")


def add_trust(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trust-model", action="store_true",
                        help="allow a model that needs arbitrary code to load (only for sources you trust)")
