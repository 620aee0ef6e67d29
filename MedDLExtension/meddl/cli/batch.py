"""The cohort options every per-case command shares (`--batch INPUTS --out DIR [--resume] [--ray ADDRESS]`),
the batch result, and the worker request that runs a segmentation cohort for Slicer."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..batch import find_cases, run_batch
from ..batch.cluster import run_batch_on_ray
from ..errors import MeddlError
from ..progress import Progress
from ..protocol import Request, Result, options
from .options import int_in, number_in

PARTIAL_EXIT_CODE = 7  # the batch ran to the end but some cases failed (each one's message is in the summary)


class UsageError(MeddlError):
    """Options that do not go together (e.g. --out without --batch)."""

    exit_code = 2


@dataclass(frozen=True)
class BatchResult(Result):
    summary_json: str
    summary_csv: str
    done: int
    failed: int
    table: Optional[str] = None
    cases: list[dict[str, Any]] = field(default_factory=list)

    def exit_code(self) -> int:
        return PARTIAL_EXIT_CODE if self.failed else 0


def add_batch_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("cohorts", "run every case of a folder, DICOM tree or CSV table")
    group.add_argument("--batch", default=None, metavar="INPUTS",
                       help="a folder of image files, a folder tree of DICOM series (each series one case), or a "
                            "CSV table (first column 'case', then one column per input image)")
    group.add_argument("--out", default=None, metavar="DIR",
                       help="output folder for the cohort (created; summary.csv and summary.json list every case)")
    group.add_argument("--resume", action="store_true",
                       help="continue an earlier run into the same --out folder, skipping its finished cases")
    group.add_argument("--ray", default=None, metavar="ADDRESS",
                       help="run the cases on a Ray cluster: 'auto' (the running cluster, or a local one) or its "
                            "address host:port (needs pip install \"meddl[cluster]\")")
    group.add_argument("--ray-workers", type=int_in(1, 10000), default=None,
                       help="Ray: model-holding workers (default: one per GPU, else one per --cpus-per-worker cores)")
    group.add_argument("--cpus-per-worker", type=number_in(0, 4096, low_open=True), default=None,
                       help="Ray: CPU cores each worker holds (default 1)")


def check_batch_usage(args: argparse.Namespace, single: tuple[str, ...], optional: tuple[str, ...] = ()) -> bool:
    """True for a cohort run; refuses mixing a cohort's options with one case's arguments (`single` are
    required for one case, `optional` only allowed with one)."""
    given = [name for name in (*single, *optional) if getattr(args, name, None)]
    ray_only = [flag for flag, value in (("--ray-workers", args.ray_workers),
                                         ("--cpus-per-worker", args.cpus_per_worker)) if value is not None]
    if args.batch is None:
        flags = [flag for flag, value in (("--out", args.out), ("--resume", args.resume), ("--ray", args.ray))
                 if value] + ray_only
        if flags:
            raise UsageError(f"{', '.join(flags)}: only with --batch INPUTS")
        missing = [_spelled(name) for name in single if not getattr(args, name, None)]
        if missing:
            raise UsageError(f"give {' and '.join(missing)}, or --batch INPUTS --out DIR for a cohort")
        return False
    if given:
        raise UsageError(f"--batch runs the cases it finds; do not also give {' and '.join(map(_spelled, given))}")
    if ray_only and not args.ray:
        raise UsageError(f"{', '.join(ray_only)}: only with --ray (the cases run on a Ray cluster)")
    if not args.out:
        raise UsageError("--batch needs --out DIR, the folder for the cohort's outputs")
    return True


def _spelled(name: str) -> str:
    """How the user typed an argument: INPUT for a positional one, --csv for an option."""
    return name.upper() if name in ("input", "output", "inputs") else f"--{name.replace('_', '-')}"


def run_cohort(task, args: argparse.Namespace, progress: Progress, allow_2d: bool = False) -> BatchResult:
    """Find the cases, run `task` on them here or on Ray, and return the summary."""
    source = Path(args.batch)
    cases = find_cases(source, allow_2d=allow_2d)
    if args.ray:
        outcome = run_batch_on_ray(task, cases, Path(args.out), args.resume, progress, source=source,
                                   address=args.ray, workers=args.ray_workers,
                                   cpus_per_worker=args.cpus_per_worker or 1.0)
    else:
        outcome = run_batch(task, cases, Path(args.out), args.resume, progress, source=source)
    return BatchResult(str(outcome.summary_json), str(outcome.summary_csv), outcome.count("done"),
                       outcome.count("failed"), str(outcome.table) if outcome.table else None,
                       [asdict(record) for record in outcome.records])


@dataclass(frozen=True)
class SegmentBatchRequest(Request):
    """Segment every case of `batch` (a folder, DICOM tree or CSV) into the folder `out` (Slicer's cohort job)."""

    command = "segment"
    result_type = BatchResult
    file_inputs = ("batch",)
    file_outputs = ("out",)
    remote = False  # a cohort runs where its files are
    batch: str
    out: str
    model: Optional[str] = None
    device: str = "auto"
    trust_model: bool = False
    resume: bool = False
    output_format: str = "nii.gz"
    fast: bool = False

    def argv(self) -> list[str]:
        return [self.command, *options(
            (("--batch", self.batch), ("--out", self.out), ("--model", self.model), ("--device", self.device),
             ("--trust-model", self.trust_model), ("--resume", self.resume),
             ("--output-format", self.output_format), ("--fast", self.fast)))]
