"""`meddl fill IMAGE PAINTED OUTPUT`: fill the slices between a few painted ones (the Segment Editor effect's
engine, also for batch work). `--state-out` keeps the trained network; `--state-in` starts the next round
from it (warm start)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import InputError
from ..io import IMAGE_SUFFIXES, read_image, write_image
from ..outputs import OutputSet
from ..protocol import Request, Result, options
from .options import add_device, add_progress, add_server, int_in

STATE_SUFFIX = ".pt"


@dataclass(frozen=True)
class FillResult(Result):
    labels: str
    state: Optional[str]
    steps: int
    warm_start: bool
    seconds: float
    drawn: dict[str, list[int]]


@dataclass(frozen=True)
class FillRequest(Request):
    """Fill `painted` (label values on a few drawn slices of `image`) into `output`."""

    command = "fill"
    result_type = FillResult
    file_inputs = ("image", "painted", "state_in")
    file_outputs = ("output", "state_out")
    image: str
    painted: str
    output: str
    state_in: Optional[str] = None
    state_out: Optional[str] = None
    steps: Optional[int] = None
    device: str = "auto"
    compress: bool = True

    def argv(self) -> list[str]:
        return [self.command, self.image, self.painted, self.output, *options(
            (("--state-in", self.state_in), ("--state-out", self.state_out), ("--steps", self.steps),
             ("--device", self.device), ("--no-compress", not self.compress)))]


def add_fill(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "fill", help="fill the slices between a few painted ones",
        description="Train a slice network on the painted slices of IMAGE (any axes, any spacing) and fill the "
                    "slices between them. Painted slices are kept exactly.")
    parser.add_argument("image", help="the image (NIfTI, NRRD, MHA or a DICOM folder)")
    parser.add_argument("painted", help="label map on the image's grid: label values on the painted slices, 0 "
                                        "elsewhere")
    parser.add_argument("output", help="the filled label map (.nii.gz, .nrrd, .mha)")
    parser.add_argument("--state-in", default=None, help="a previous round's --state-out: start from its network")
    parser.add_argument("--state-out", default=None, help=f"keep the trained network here ({STATE_SUFFIX})")
    parser.add_argument("--steps", type=int_in(10, 100000), default=None,
                        help="training steps (default: 400, or 120 when starting from --state-in)")
    add_device(parser)
    add_server(parser)
    parser.add_argument("--no-compress", action="store_true", help="write the label map uncompressed")
    add_progress(parser)


def _read_state(path: Optional[str]) -> Optional[dict]:
    if path is None:
        return None
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(f"--state-in {path} does not exist") from None
    except Exception:  # noqa: BLE001 - any unreadable or foreign file (torch's own message suggests unsafe loading)
        raise InputError(f"--state-in {path} is not a fill state written by `meddl fill --state-out` (it does "
                         "not load as plain weights)") from None
    if not isinstance(state, dict):
        raise InputError(f"--state-in {path} is not a fill state written by `meddl fill --state-out`")
    return state


def run_fill(args: argparse.Namespace, progress) -> FillResult:
    import torch

    from ..segmentation.slice_fill import FillSettings, fill_from_slices

    if args.state_out is not None and not args.state_out.endswith(STATE_SUFFIX):
        raise InputError(f"--state-out must end in {STATE_SUFFIX}")
    state = _read_state(args.state_in)
    with OutputSet(inputs=[args.image, args.painted] + ([args.state_in] if args.state_in else [])) as outputs:
        output = outputs.add(args.output, IMAGE_SUFFIXES)
        state_path = outputs.add(args.state_out) if args.state_out else None
        image, painted = read_image(args.image), read_image(args.painted)
        settings = FillSettings(device=args.device)
        if args.steps is not None:
            settings.steps = settings.warm_steps = args.steps
        result = fill_from_slices(image, painted, state=state, settings=settings, progress=progress)
        write_image(result.labels, output, not args.no_compress, outputs)
        if state_path is not None:
            torch.save(result.state, outputs.staged(state_path))
        outputs.commit()
    return FillResult(str(Path(args.output)), args.state_out, result.steps, result.warm_start,
                      round(result.seconds, 2), {str(axis): indices for axis, indices in result.drawn.items()})
