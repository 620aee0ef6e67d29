"""Options that every command shares, added the same way everywhere."""

from __future__ import annotations

import argparse
import re

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
KEY_VARIABLE = "MEDDL_API_KEY"  # where `--server` finds the API key (or --api-key-file)


def add_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--progress", choices=["bar", "json", "none"], default="bar",
                        help="terminal bar, JSON lines on stdout (the worker protocol), or nothing")


def device_name(text: str) -> str:
    """An argparse `type` for --device: one of DEVICE_CHOICES or cuda:N (whether it is available is checked
    before the work, exit 6)."""
    name = text.strip().lower()
    if name in DEVICE_CHOICES or re.fullmatch(r"cuda:\d{1,3}", name):
        return name
    raise argparse.ArgumentTypeError(f"expected one of {', '.join(DEVICE_CHOICES)} or cuda:N, not {text!r}")


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", type=device_name,
                        help=f"one of {', '.join(DEVICE_CHOICES)} or cuda:N (auto: CUDA, then Apple MPS, then CPU)")


def add_trust(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trust-model", action="store_true",
                        help="allow a model that needs arbitrary code to load (only for sources you trust)")


def voxel_counts(*lengths: int, keyword: str = ""):
    """An argparse `type` for 'i,j,k' voxel counts: a tuple of `lengths` positive integers (or `keyword` as
    itself); anything else is argparse's one-line usage error (exit 2), not a traceback later on."""

    def parse(text: str):
        if keyword and text == keyword:
            return text
        try:
            values = tuple(int(item) for item in text.split(","))
        except ValueError:
            values = ()
        if len(values) not in lengths or min(values) < 1:
            counts = " or ".join(str(n) for n in lengths)
            raise argparse.ArgumentTypeError(f"expected {counts} positive integers separated by commas, "
                                             f"e.g. {','.join(['96'] * lengths[-1])}, not {text!r}")
        return values

    parse.__name__ = "voxel counts"  # argparse names the type in its message when ArgumentTypeError is not used
    return parse


def int_in(low: int, high: int):
    """An argparse `type` for an integer in low..high; anything else is argparse's one-line usage error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected an integer from {low} to {high}, not {text!r}")
        return value

    return parse


def number_in(low: float, high: float, low_open: bool = False):
    """An argparse `type` for a finite number in low..high (above `low` when `low_open`)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not (low < value <= high if low_open else low <= value <= high):
            bound = f"above {low}" if low_open else f"from {low}"
            raise argparse.ArgumentTypeError(f"expected a number {bound} to {high}, not {text!r}")
        return value

    return parse


def add_server(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", default=None, metavar="URL",
                        help="run on a MedDL server (`meddl serve`), e.g. https://gpu-box:8765; the API key comes "
                             f"from ${KEY_VARIABLE} or --api-key-file")
    parser.add_argument("--api-key-file", default=None, metavar="FILE",
                        help="a file holding the server's API key (never put the key itself on a command line)")
