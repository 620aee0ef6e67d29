"""`meddl enhance INPUT OUTPUT --task denoise|superres`: self-supervised on the image itself, or a pretrained model."""

from __future__ import annotations

import argparse
from pathlib import Path

from .errors import InputError


def add_command(commands: argparse._SubParsersAction, add_progress) -> None:
    parser = commands.add_parser("enhance", help="denoise or super-resolve a volume into a new volume",
                                 description="Denoise, or super-resolve along the thick-slice axis, self-supervised "
                                             "on the image itself (no weights needed) or with a pretrained model.")
    parser.add_argument("input", help="image file or DICOM folder (never changed)")
    parser.add_argument("output", help="enhanced image file (.nii.gz, .nrrd, .mha)")
    parser.add_argument("--task", choices=["denoise", "superres"], required=True)
    parser.add_argument("--model", default=None,
                        help="a pretrained enhancement model (id, file or bundle); default: self-supervised")
    parser.add_argument("--trust-model", action="store_true")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps of the self-supervised method (denoise: 0 = no network, a blur "
                             "guides the block matching instead, in seconds)")
    parser.add_argument("--time-budget", type=float, default=None, help="stop self-supervised training after S s")
    parser.add_argument("--wiener-passes", type=int, default=1,
                        help="denoise: grouped Wiener passes after the grouped hard thresholding of the image")
    parser.add_argument("--noise", choices=["auto", "rician", "gaussian"], default="auto",
                        help="denoise: the noise model (auto: rician, as in MR magnitude, unless a voxel is negative)")
    parser.add_argument("--factor", type=int, default=None,
                        help="superres: through-plane upsampling factor (default: thick over in-plane spacing)")
    parser.add_argument("--save-model", default=None,
                        help="denoise: also write the self-trained network (.pt with its .json card) for reuse")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-compress", action="store_true", help="write the output uncompressed")
    add_progress(parser)


def _self_supervised(image, args: argparse.Namespace, progress):
    from dataclasses import replace

    if args.task == "denoise":
        from .enhancement.denoise import DenoiseSettings, self_supervised_denoise

        settings = DenoiseSettings(device=args.device, time_budget_s=args.time_budget,
                                   wiener_passes=args.wiener_passes, noise=args.noise)
        settings = replace(settings, steps=args.steps) if args.steps is not None else settings
        return self_supervised_denoise(image, settings, progress, Path(args.save_model) if args.save_model else None)
    from .enhancement.superres import SuperResolutionSettings, self_supervised_superres

    settings = SuperResolutionSettings(factor=args.factor, device=args.device, time_budget_s=args.time_budget)
    settings = replace(settings, steps=args.steps) if args.steps is not None else settings
    return self_supervised_superres(image, settings, progress)


def run_enhance(args: argparse.Namespace, progress) -> dict:
    from .enhancement.pretrained import enhance_with_model, enhancement_kind
    from .files import check_writable
    from .io import read_image, write_image
    from .models.loading import load_model

    check_writable(Path(args.output))
    if args.save_model and (args.task != "denoise" or args.model):
        raise InputError("--save-model keeps a self-supervised denoiser: use it with --task denoise and no --model")
    image = read_image(args.input)
    if args.model:
        model = load_model(args.model, trust=args.trust_model)
        if enhancement_kind(model) != args.task:
            raise InputError(f"model {model.card.name!r} does {enhancement_kind(model)}, not {args.task}")
        result, method = enhance_with_model(image, model, args.device, progress), model.card.name
    else:
        result, method = _self_supervised(image, args, progress), "self-supervised"
    write_image(result, Path(args.output), compress=not args.no_compress)
    settings = {"task": args.task, "method": method, "steps": args.steps, "factor": args.factor,
                "spacing": list(result.spacing)}
    if args.task == "denoise" and not args.model:
        settings.update(wiener_passes=args.wiener_passes, noise=args.noise)
    return {"outputs": {"image": str(args.output)}, "settings": settings}
