"""`meddl register FIXED MOVING --out-transform T --out-warped W`: affine + deformable instance optimisation."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def add_command(commands: argparse._SubParsersAction, add_progress) -> None:
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
    parser.add_argument("--smoothness", type=float, default=None, help="weight of the bending energy")
    parser.add_argument("--iterations", type=int, default=None,
                        help="deformable steps at every pyramid level (default: 80, 60, 20 at 1/4, 1/2, 1)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-compress", action="store_true")
    add_progress(parser)


def similarity_figures(fixed, moving_on_fixed) -> float:
    """Normalised cross-correlation of two arrays on the same grid."""
    a, b = fixed.astype(np.float64).ravel(), moving_on_fixed.astype(np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / max(np.sqrt((a @ a) * (b @ b)), 1e-12))


def run_register(args: argparse.Namespace, progress) -> dict:
    from dataclasses import replace

    from .errors import InputError
    from .files import check_writable
    from .io import read_image, write_image
    from .registration.fields import warp, write_displacement_field
    from .registration.optimise import RegistrationSettings, register

    outputs = [args.out_transform, args.out_warped, args.out_warped_labels, args.out_report]
    for path in filter(None, outputs):
        check_writable(Path(path))
    if bool(args.moving_labels) != bool(args.out_warped_labels):
        raise InputError("--moving-labels and --out-warped-labels go together")
    fixed, moving = read_image(args.fixed), read_image(args.moving)
    labels = read_image(args.moving_labels) if args.moving_labels else None
    if labels is not None and not labels.same_grid(moving):
        raise InputError("the moving label map is not on the moving image's grid")
    settings = RegistrationSettings(method=args.method, similarity=args.similarity, device=args.device)
    if args.smoothness is not None:
        settings = replace(settings, smoothness=args.smoothness)
    if args.iterations:
        settings = replace(settings, deformable_iterations=(args.iterations,))
    result = register(fixed, moving, settings, progress)
    warped = warp(moving, fixed, result.displacement)
    identity = warp(moving, fixed, np.zeros_like(result.displacement))
    report = {"ncc_before": similarity_figures(fixed.array, identity.array),
              "ncc_after": similarity_figures(fixed.array, warped.array), **result.metrics,
              "method": args.method, "similarity": args.similarity}
    write_displacement_field(result.displacement, fixed, Path(args.out_transform))
    if args.out_warped:
        write_image(warped, Path(args.out_warped), compress=not args.no_compress)
    if labels is not None:
        write_image(warp(labels, fixed, result.displacement, labels=True), Path(args.out_warped_labels),
                    compress=not args.no_compress)
    if args.out_report:
        Path(args.out_report).write_text(json.dumps(report, indent=1))
    return {"outputs": {name: str(path) for name, path in zip(("transform", "warped", "warped_labels", "report"),
                                                              outputs) if path}, "report": report}
