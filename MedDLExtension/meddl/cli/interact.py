"""The promptable task's command, `meddl interact IMAGE MODEL PROMPTS OUTPUT`: segmentation with nnInteractive or
SAM 2 models from points, boxes, scribbles and lassos given in physical space (a JSON file), for batch work and
for Slicer's Segment Editor effect.

The request always carries the whole prompt history. A long-lived process (Slicer's worker, a server's worker)
keeps the last sessions it opened, each with its image and the prompts it has run, so a request that only
adds a prompt runs only that prompt, and one that drops the last prompt undoes it; anything else is replayed
from the start. The answer never depends on what the process remembered, only how long it takes.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional

from ..errors import InputError
from ..interactive import PromptedImage, open_session, read_prompts
from ..io import IMAGE_SUFFIXES, read_image, write_image
from ..outputs import OutputSet
from ..protocol import Request, Result, options
from .options import add_device, add_progress, add_server, add_trust, int_in

SESSION_CACHE_SIZE = 2
_sessions: OrderedDict[tuple, object] = OrderedDict()


@dataclass(frozen=True)
class InteractResult(Result):
    labels: str
    family: str
    license: str
    seconds: list[float]  # each prompt run by this request (none when all were remembered or undone)
    replayed: bool  # whether the session started again from the first prompt
    total_seconds: float


@dataclass(frozen=True)
class InteractRequest(Request):
    """Run `prompts` (a JSON file) on `image` with the promptable `model`; the label map goes to `output`."""

    command = "interact"
    result_type = InteractResult
    file_inputs = ("image", "prompts", "seed_labels")
    file_outputs = ("output",)
    # what a server's interactive session fixes when it opens (its jobs send only the prompts and the output)
    session_fields: ClassVar[tuple[str, ...]] = ("image", "model", "seed_labels", "device", "trust_model", "seed")
    image: str
    model: str
    prompts: str
    output: str
    seed_labels: Optional[str] = None
    device: str = "auto"
    trust_model: bool = False
    seed: int = 0
    compress: bool = True

    def argv(self) -> list[str]:
        return [self.command, self.image, self.model, self.prompts, self.output, *options(
            (("--seed-labels", self.seed_labels), ("--device", self.device), ("--trust-model", self.trust_model),
             ("--seed", self.seed), ("--no-compress", not self.compress)))]


def add_commands(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "interact", help="promptable segmentation (nnInteractive, SAM 2) from points, boxes and scribbles",
        description="Segment one object of IMAGE with a promptable MODEL (an nnInteractive model folder or a SAM 2 "
                    "checkpoint, or their library ids) from the prompts in PROMPTS, a JSON list such as "
                    '[{"kind": "point", "points": [[x, y, z]], "positive": true}, {"kind": "box", "points": '
                    '[[x, y, z], [x, y, z]]}]; positions in millimetres, RAS unless "space": "LPS". Kinds: point, '
                    "box, scribble, lasso.")
    parser.add_argument("image", help="the image (NIfTI, NRRD, MHA or a DICOM folder)")
    parser.add_argument("model", help="an nnInteractive model folder, a SAM 2 checkpoint, or a library id")
    parser.add_argument("prompts", help="the prompts, in order (JSON)")
    parser.add_argument("output", help="the label map, 1 = the object (.nii.gz, .nrrd, .mha)")
    parser.add_argument("--seed-labels", default=None,
                        help="a label map on the image's grid to start from (a previous result); nonzero = object")
    add_device(parser)
    add_trust(parser)
    parser.add_argument("--seed", type=int_in(0, 2**31 - 1), default=0,
                        help="seed for the package's random choices (results repeat exactly)")
    add_server(parser)
    parser.add_argument("--no-compress", action="store_true", help="write the label map uncompressed")
    add_progress(parser)


def _stamp(path: Optional[str]) -> tuple:
    if path is None:
        return ()
    stat = Path(path).stat()
    return str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns


def _prompted_image(args: argparse.Namespace):
    """The remembered session for this model, image, seed labels and device, or a new one."""
    try:
        key = (str(args.model), _stamp(args.image), _stamp(args.seed_labels), args.device, args.trust_model,
               args.seed)
    except OSError as error:
        raise InputError(f"cannot read {error.filename}: {error.strerror}") from None
    if key in _sessions:
        _sessions.move_to_end(key)
        return _sessions[key]
    image = read_image(args.image)
    seed = read_image(args.seed_labels) if args.seed_labels else None
    if seed is not None and not image.same_grid(seed):
        raise InputError(f"the seed labels {args.seed_labels} are not on the grid of {args.image}")
    _sessions.pop(next((k for k in _sessions if k[1] == key[1]), None), None)  # one session per image
    prompted = PromptedImage(open_session(args.model, args.trust_model, args.device, args.seed), image, seed)
    _sessions[key] = prompted
    while len(_sessions) > SESSION_CACHE_SIZE:
        _sessions.popitem(last=False)
    return prompted


def release(files: list[str]) -> int:
    """Forget the remembered sessions whose image or seed labels is one of `files` (a server's session was
    closed) and give their memory back; how many were dropped."""
    paths = {str(Path(name).resolve()) for name in files}
    gone = [key for key in _sessions if any(stamp and stamp[0] in paths for stamp in (key[1], key[2]))]
    for key in gone:
        del _sessions[key]
    gc.collect()
    torch = sys.modules.get("torch")
    if gone and torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
    return len(gone)


def run_interact(args: argparse.Namespace, progress) -> InteractResult:
    start = time.perf_counter()
    prompts = read_prompts(args.prompts)
    if not prompts and args.seed_labels is None:
        raise InputError(f"{args.prompts} holds no prompts (and no --seed-labels is given): nothing to segment")
    progress(0.0, "opening the model")
    prompted = _prompted_image(args)
    progress(0.1, f"running {len(prompts)} prompt(s)")
    try:
        labels, seconds, replayed = prompted.bring_to(prompts)
    except Exception:
        _sessions.pop(next((k for k, v in _sessions.items() if v is prompted), None), None)  # unknown state
        raise
    inputs = [args.image, args.prompts] + ([args.seed_labels] if args.seed_labels else [])
    with OutputSet(inputs=inputs) as outputs:
        write_image(labels, outputs.add(args.output, IMAGE_SUFFIXES), not args.no_compress, outputs)
        outputs.commit()
    progress(1.0, f"{sum(seconds):.2f} s for {len(seconds)} prompt(s)")
    session = prompted.session
    return InteractResult(str(args.output), session.family, session.license, [round(s, 4) for s in seconds],
                          replayed, round(time.perf_counter() - start, 4))


RUNNERS = {"interact": run_interact}
REQUESTS = (InteractRequest,)
