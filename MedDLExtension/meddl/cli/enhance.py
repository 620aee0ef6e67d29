"""`meddl enhance INPUT OUTPUT --task denoise|superres`: self-calibrated on the image itself, or a pretrained
model; and the enhance worker request."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..batch.cases import Case
from ..batch.summary import CaseRecord
from ..enhancement import KINDS
from ..errors import InputError
from ..io import IMAGE_SUFFIXES, read_image, write_image
from ..models.formats import model_files
from ..outputs import OutputSet
from ..progress import Progress
from ..protocol import Request, Result, options
from .batch import BatchResult, UsageError, add_batch_options, check_batch_usage, run_cohort
from .options import add_device, add_progress, add_server, add_trust, int_in, number_in

METHODS = ("filter", "network")  # denoise: filter (the default) or network; super-resolution: network


@dataclass(frozen=True)
class EnhanceResult(Result):
    image: str
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EnhanceRequest(Request):
    """Denoise or super-resolve `input` into `output` (self-calibrated, or with `model`)."""

    command = "enhance"
    result_type = EnhanceResult
    file_inputs = ("input",)
    file_outputs = ("output",)
    arg_names = {"time_budget_s": "time_budget"}
    input: str
    output: str
    task: str = "denoise"
    method: Optional[str] = None
    model: Optional[str] = None
    steps: Optional[int] = None
    factor: Optional[int] = None
    time_budget_s: Optional[float] = None
    noise: Optional[str] = "auto"
    device: str = "auto"
    compress: bool = True
    trust_model: bool = False

    def argv(self) -> list[str]:
        return [self.command, str(self.input), str(self.output), *options(
            (("--task", self.task), ("--method", self.method), ("--model", self.model), ("--steps", self.steps),
             ("--factor", self.factor), ("--time-budget", self.time_budget_s), ("--noise", self.noise),
             ("--device", self.device), ("--no-compress", not self.compress),
             ("--trust-model", self.trust_model)))]


def add_commands(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("enhance", help="denoise or super-resolve a volume into a new volume",
                                 description="Denoise (by default with collaborative filtering calibrated on the "
                                             "image itself, in seconds), or super-resolve along the thick-slice "
                                             "axis with a network trained on the image itself; or run a pretrained "
                                             "enhancement model.")
    parser.add_argument("input", nargs="?", help="image file or DICOM folder (never changed)")
    parser.add_argument("output", nargs="?", help="enhanced image file (.nii.gz, .nrrd, .mha)")
    parser.add_argument("--task", choices=KINDS, required=True)
    parser.add_argument("--method", choices=METHODS, default=None,
                        help="denoise: 'filter' (default; grouped block filtering guided by a blur, no network) or "
                             "'network' (a blind-spot network trained on the image guides it: slower, measured as "
                             "no better on CPU budgets); superres: 'network' only")
    parser.add_argument("--model", default=None,
                        help="a pretrained enhancement model (id, file or bundle) instead of a method")
    add_trust(parser)
    parser.add_argument("--steps", type=int_in(0, 10**7), default=None,
                        help="training steps of the self-supervised network (denoise: giving them chooses "
                             "--method network; default 300)")
    parser.add_argument("--time-budget", type=number_in(0, 10**7, low_open=True), default=None,
                        help="stop self-supervised training after S s")
    parser.add_argument("--wiener-passes", type=int_in(0, 10), default=1,
                        help="denoise: grouped Wiener passes after the grouped hard thresholding of the image")
    parser.add_argument("--noise", choices=["auto", "rician", "gaussian"], default="auto",
                        help="denoise: the noise model (auto: rician, as in MR magnitude, unless a voxel is negative)")
    parser.add_argument("--factor", type=int_in(2, 16), default=None,
                        help="superres: through-plane upsampling factor (default: thick over in-plane spacing)")
    parser.add_argument("--save-model", default=None,
                        help="denoise with --method network: also write the self-trained network (.pt with its "
                             ".json card) for reuse")
    add_device(parser)
    add_server(parser)
    parser.add_argument("--no-compress", action="store_true", help="write the output uncompressed")
    add_progress(parser)
    add_batch_options(parser)


def chosen_method(args: argparse.Namespace) -> str | None:
    """The self-calibrated method ("filter" or "network"; None with --model), refusing options that would be
    ignored: denoising filters without a network unless --method network, --steps N or --save-model asks
    for one."""
    if args.model:
        given = [flag for flag, value in (("--method", args.method), ("--steps", args.steps is not None),
                                          ("--save-model", args.save_model), ("--time-budget", args.time_budget))
                 if value]
        if given:
            raise InputError(f"{', '.join(given)}: for the self-calibrated methods, not with --model")
        return None
    if args.task == "superres":
        if args.method == "filter":
            raise InputError("super-resolution has no filter method: it trains its network on the image "
                             "(--method network, the default)")
        return "network"
    if args.method == "filter" or args.steps == 0:
        for flag, given, why in (("--method network", args.method == "network", "trains a network"),
                                 ("--steps", bool(args.steps), "counts the network's training steps"),
                                 ("--save-model", bool(args.save_model), "keeps the self-trained network"),
                                 ("--time-budget", args.time_budget is not None, "limits the network's training")):
            if given:
                raise InputError(f"{flag} {why}, and the filter method (or --steps 0) trains none")
        return "filter"
    asked = args.method == "network" or args.steps or args.save_model or args.time_budget is not None
    return "network" if asked else "filter"


def _self_calibrated(image, args: argparse.Namespace, method: str, progress):
    """The enhanced image and the network's training steps (0: no network)."""
    from dataclasses import replace

    if args.task == "denoise":
        from ..enhancement.denoise import NETWORK_STEPS, DenoiseSettings, self_supervised_denoise

        settings = DenoiseSettings(device=args.device, time_budget_s=args.time_budget,
                                   wiener_passes=args.wiener_passes, noise=args.noise,
                                   steps=(args.steps or NETWORK_STEPS) if method == "network" else 0)
        save = Path(args.save_model) if args.save_model else None
        return self_supervised_denoise(image, settings, progress, save), settings.steps
    from ..enhancement.superres import SuperResolutionSettings, self_supervised_superres

    settings = SuperResolutionSettings(factor=args.factor, device=args.device, time_budget_s=args.time_budget)
    settings = replace(settings, steps=args.steps) if args.steps is not None else settings
    return self_supervised_superres(image, settings, progress), settings.steps


def run_enhance(args: argparse.Namespace, progress) -> EnhanceResult | BatchResult:
    from ..enhancement.pretrained import enhance_with_model, enhancement_kind
    from ..models.loading import load_model

    if check_batch_usage(args, ("input", "output")):
        if args.save_model:
            raise UsageError("--save-model keeps one image's self-trained network: not with --batch")
        return run_cohort(EnhanceCases(_cohort_options(args)), args, progress)

    with OutputSet(inputs=[args.input, *model_files(args.model)]) as outputs:
        output = outputs.add(args.output, IMAGE_SUFFIXES)
        if args.save_model and args.task != "denoise":
            raise InputError("--save-model keeps a self-trained denoiser: use it with --task denoise")
        if args.save_model:
            saved = outputs.add(args.save_model, (".pt", ".pth"))
            outputs.add(saved.with_suffix(".json"))
            args = argparse.Namespace(**{**vars(args), "save_model": str(outputs.staged(saved))})
        method = chosen_method(args)
        image = read_image(args.input)
        if args.model:
            model = load_model(args.model, trust=args.trust_model)
            if enhancement_kind(model) != args.task:
                raise InputError(f"model {model.card.name!r} does {enhancement_kind(model)}, not {args.task}")
            result, method, steps = enhance_with_model(image, model, args.device, progress), model.card.name, None
        else:
            result, steps = _self_calibrated(image, args, method, progress)
        write_image(result, output, compress=not args.no_compress, outputs=outputs)
        outputs.commit()
    settings = {"task": args.task, "method": method, "steps": steps, "factor": args.factor,
                "spacing": list(result.spacing)}
    if args.task == "denoise" and not args.model:
        settings.update(wiener_passes=args.wiener_passes, noise=args.noise)
    return EnhanceResult(str(output), settings)


@dataclass
class EnhanceCases:
    """`meddl enhance --batch`: an enhanced volume per case, with the options `meddl enhance` takes."""

    options: dict[str, Any]
    command: str = "enhance"
    _model: Any = field(default=None, init=False, repr=False)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_model": None}

    def check(self, cases: list[Case]) -> None:
        chosen_method(argparse.Namespace(**self.options))

    def load(self, progress: Progress) -> None:
        from ..enhancement.pretrained import enhancement_kind
        from ..models.loading import load_model

        if self.options.get("model"):
            self._model = load_model(self.options["model"], trust=self.options.get("trust_model", False))
            if enhancement_kind(self._model) != self.options["task"]:
                raise InputError(f"model {self._model.card.name!r} does {enhancement_kind(self._model)}, "
                                 f"not {self.options['task']}")

    def read(self, case: Case):
        return case.read()[0]

    def run(self, case: Case, image, folder: Path, progress: Progress) -> tuple[list[Path], dict[str, Any]]:
        from ..enhancement.pretrained import enhance_with_model

        args = argparse.Namespace(**self.options)
        if self._model is not None:
            result = enhance_with_model(image, self._model, args.device, progress)
        else:
            result, _ = _self_calibrated(image, args, chosen_method(args), progress)
        with OutputSet(inputs=list(case.inputs)) as outputs:
            target = outputs.add(folder / f"{case.id}.nii.gz")
            write_image(result, target, not args.no_compress, outputs)
            outputs.commit()
        return [target], {"spacing": " ".join(f"{value:g}" for value in result.spacing)}

    def finish(self, records: list[CaseRecord], folder: Path) -> Path | None:
        return None


def _cohort_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options each case of a cohort is enhanced with (those of one `meddl enhance` run)."""
    batch_only = ("batch", "out", "resume", "ray", "ray_workers", "cpus_per_worker", "progress", "command")
    return {key: value for key, value in vars(args).items() if key not in batch_only}


RUNNERS = {"enhance": run_enhance}
REQUESTS = (EnhanceRequest,)
