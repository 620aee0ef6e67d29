"""`meddl register FIXED MOVING --out-transform T --out-warped W`: affine + deformable instance optimisation;
`meddl train-registration`; and the register worker request."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import InputError
from ..io import IMAGE_SUFFIXES, read_image, write_image
from ..models.formats import model_files
from ..outputs import OutputSet
from ..protocol import Request, Result, options
from ..registration.field_files import write_displacement_field
from .options import add_device, add_progress, add_server, add_trust, int_in, number_in


@dataclass(frozen=True)
class RegisterResult(Result):
    transform: str
    warped: Optional[str] = None
    warped_labels: Optional[str] = None
    report_path: Optional[str] = None
    report: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RegisterRequest(Request):
    """Register `moving` to `fixed`: the displacement field, and optionally the warped image and labels."""

    command = "register"
    result_type = RegisterResult
    file_inputs = ("fixed", "moving", "moving_labels")
    file_outputs = ("out_transform", "out_warped", "out_warped_labels", "out_report")
    fixed: str
    moving: str
    out_transform: str
    out_warped: Optional[str] = None
    moving_labels: Optional[str] = None
    out_warped_labels: Optional[str] = None
    out_report: Optional[str] = None
    method: str = "deformable"
    similarity: str = "lncc"
    iterations: Optional[int] = None
    time_budget: Optional[float] = None
    tolerance: Optional[float] = None
    model: Optional[str] = None
    device: str = "auto"
    compress: bool = True
    trust_model: bool = False

    def argv(self) -> list[str]:
        return [self.command, str(self.fixed), str(self.moving), *options(
            (("--out-transform", self.out_transform), ("--out-warped", self.out_warped),
             ("--moving-labels", self.moving_labels), ("--out-warped-labels", self.out_warped_labels),
             ("--out-report", self.out_report), ("--method", self.method), ("--similarity", self.similarity),
             ("--iterations", self.iterations), ("--time-budget", self.time_budget),
             ("--tolerance", self.tolerance), ("--model", self.model),
             ("--device", self.device), ("--no-compress", not self.compress),
             ("--trust-model", self.trust_model)))]


@dataclass(frozen=True)
class TrainRegistrationResult(Result):
    model: str
    card: str


def add_commands(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("register", help="register a moving image to a fixed image",
                                 description="Affine pre-alignment, then a diffeomorphic deformation optimised on "
                                             "this pair. The transform is written as an ITK displacement field "
                                             "(fixed -> moving, LPS mm), which Slicer, ANTs and elastix read.")
    parser.add_argument("fixed")
    parser.add_argument("moving")
    parser.add_argument("--out-transform", required=True, help="displacement field file (.nii.gz, .nrrd, .mha)")
    parser.add_argument("--out-warped", default=None, help="the moving image resampled on the fixed grid")
    parser.add_argument("--moving-labels", default=None, help="a label map on the moving image to carry along")
    parser.add_argument("--out-warped-labels", default=None, help="where the carried label map goes")
    parser.add_argument("--out-report", default=None, help="quality figures as JSON")
    parser.add_argument("--method", choices=["affine", "deformable"], default="deformable")
    parser.add_argument("--similarity", choices=["lncc", "mi"], default="lncc",
                        help="lncc: one modality; mi: mutual information for two modalities")
    parser.add_argument("--smoothness", type=number_in(0, 10**6), default=None, help="weight of the bending energy")
    parser.add_argument("--iterations", type=int_in(1, 10**6), default=None,
                        help="deformable steps at every pyramid level (default: 80, 60, 40 at 1/4, 1/2, 1)")
    parser.add_argument("--time-budget", type=number_in(0, 10**7, low_open=True), default=None,
                        help="seconds of optimisation, shared among the pyramid levels (a level that converges "
                             "early leaves its time to the next)")
    parser.add_argument("--tolerance", type=number_in(0, 1), default=None,
                        help="a level stops when 10 steps improve its loss by less than this share "
                             "(default 0.001; 0: run every step)")
    parser.add_argument("--model", default=None, help="a learned registration model (meddl train-registration) or "
                                                      "a MONAI registration bundle (with --trust-model)")
    parser.add_argument("--refine", action="store_true", help="refine the model's deformation by optimisation")
    add_trust(parser)
    add_device(parser)
    add_server(parser)
    parser.add_argument("--no-compress", action="store_true")
    add_progress(parser)
    train = commands.add_parser("train-registration", help="train a VoxelMorph registration model, unsupervised",
                                description="Unsupervised training on a set of images of one kind: each is "
                                            "affinely aligned to the first, then a MONAI VoxelMorph learns to "
                                            "align any one to any other (LNCC + bending energy).")
    train.add_argument("--images", nargs="+", required=True)
    train.add_argument("--out", required=True, help="model file (.pt); its card is written beside it (.json)")
    train.add_argument("--steps", type=int_in(1, 10**7), default=300)
    train.add_argument("--time-budget", type=number_in(0, 10**7, low_open=True), default=None)
    add_device(train)
    add_progress(train)


def run_train_registration(args: argparse.Namespace, progress) -> TrainRegistrationResult:
    from ..registration.learned import RegistrationTrainingSettings, train_registration

    with OutputSet(inputs=args.images) as outputs:  # checked before training; written by train_registration
        outputs.add(args.out, (".pt", ".pth"))
        outputs.add(Path(args.out).with_suffix(".json"))
    settings = RegistrationTrainingSettings(steps=args.steps, time_budget_s=args.time_budget, device=args.device)
    out = train_registration([read_image(path) for path in args.images], Path(args.out), settings, progress)
    return TrainRegistrationResult(str(out), str(out.with_suffix(".json")))


def _registered(fixed, moving, settings, args: argparse.Namespace, progress):
    from ..registration.optimise import register

    if not args.model:
        return register(fixed, moving, settings, progress)
    from ..models.loading import load_model
    from ..registration.learned import learned_register

    model = load_model(args.model, trust=args.trust_model)
    refinement = replace(settings, levels=(2, 1), deformable_iterations=settings.deformable_iterations[-2:])
    if model.pipeline.get("type") == "monai-bundle":  # a MONAI bundle: its own workflow gives the deformation
        from ..registration.bundle_run import bundle_register

        return bundle_register(fixed, moving, model, args.refine, refinement, progress)
    return learned_register(fixed, moving, model, args.refine, refinement, progress)


def normalised_cross_correlation(fixed, moving_on_fixed) -> float:
    """Normalised cross-correlation of two arrays on the same grid."""
    a, b = fixed.astype(np.float64).ravel(), moving_on_fixed.astype(np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / max(np.sqrt((a @ a) * (b @ b)), 1e-12))


def _declare_outputs(args: argparse.Namespace, outputs: OutputSet) -> None:
    """Check every output path before the work: a bad one fails now, not after the registration."""
    outputs.add(args.out_transform, IMAGE_SUFFIXES)
    for path in (args.out_warped, args.out_warped_labels):
        if path:
            outputs.add(path, IMAGE_SUFFIXES)
    if args.out_report:
        outputs.add(args.out_report)


def _report(fixed, moving, warped, result, args: argparse.Namespace) -> dict[str, Any]:
    from ..registration.fields import warp

    identity = warp(moving, fixed, np.zeros_like(result.displacement))
    return {"ncc_before": normalised_cross_correlation(fixed.array, identity.array),
            "ncc_after": normalised_cross_correlation(fixed.array, warped.array), **result.metrics,
            "method": args.method, "similarity": args.similarity}


def run_register(args: argparse.Namespace, progress) -> RegisterResult:
    from ..registration.fields import warp
    from ..registration.optimise import RegistrationSettings

    if bool(args.moving_labels) != bool(args.out_warped_labels):
        raise InputError("--moving-labels and --out-warped-labels go together")
    with OutputSet(inputs=[args.fixed, args.moving, args.moving_labels, *model_files(args.model)]) as outputs:
        _declare_outputs(args, outputs)
        fixed, moving = read_image(args.fixed), read_image(args.moving)
        labels = read_image(args.moving_labels) if args.moving_labels else None
        if labels is not None and not labels.same_grid(moving):
            raise InputError("the moving label map is not on the moving image's grid")
        settings = RegistrationSettings(method=args.method, similarity=args.similarity, device=args.device)
        if args.smoothness is not None:
            settings = replace(settings, smoothness=args.smoothness)
        if args.iterations:
            settings = replace(settings, deformable_iterations=(args.iterations,))
        settings = replace(settings, time_budget_s=args.time_budget)
        if args.tolerance is not None:
            settings = replace(settings, tolerance=args.tolerance)
        result = _registered(fixed, moving, settings, args, progress)
        warped = warp(moving, fixed, result.displacement)
        report = _report(fixed, moving, warped, result, args)
        compress = not args.no_compress
        write_displacement_field(result.displacement, fixed, Path(args.out_transform), outputs)
        if args.out_warped:
            write_image(warped, args.out_warped, compress, outputs)
        if labels is not None:
            write_image(warp(labels, fixed, result.displacement, labels=True), args.out_warped_labels, compress,
                        outputs)
        if args.out_report:
            outputs.staged(args.out_report).write_text(json.dumps(report, indent=1))
        outputs.commit()
    paths = [args.out_transform, args.out_warped, args.out_warped_labels, args.out_report]
    return RegisterResult(*(str(path) if path else None for path in paths), report=report)


RUNNERS = {"register": run_register, "train-registration": run_train_registration}
REQUESTS = (RegisterRequest,)
