"""Segmentation on the command line and the worker: `meddl segment INPUT OUTPUT [--model M]` (a label map and
its labels sidecar) and `meddl train` (a segmentation model from image and label files, as a MONAI bundle)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..batch.tasks import LABEL_FORMATS, SegmentCases
from ..errors import InputError
from ..io import read_image
from ..models import catalog, store
from ..models.card import parse_label_names
from ..outputs import OutputSet
from ..protocol import Request, Result, options
from .batch import BatchResult, SegmentBatchRequest, UsageError, add_batch_options, check_batch_usage, run_cohort
from .fill import FillRequest, add_fill, run_fill
from .options import add_device, add_progress, add_server, add_trust, int_in, number_in, voxel_counts


@dataclass(frozen=True)
class SegmentResult(Result):
    labels: str
    label_table: str
    model: str


@dataclass(frozen=True)
class SegmentRequest(Request):
    """Segment `input` into the label map `output` (and its `.labels.json`)."""

    command = "segment"
    result_type = SegmentResult
    file_inputs = ("input", "more_inputs")
    file_outputs = ("output",)
    input: str
    output: str
    model: Optional[str] = None
    device: str = "auto"
    trust_model: bool = False
    compress: bool = True
    fast: bool = False
    folds: tuple[str, ...] = ()
    more_inputs: tuple[str, ...] = ()

    def argv(self) -> list[str]:
        return [self.command, str(self.input), str(self.output), *options(
            (("--model", self.model), ("--device", self.device), ("--trust-model", self.trust_model),
             ("--no-compress", not self.compress), ("--fast", self.fast), ("--folds", self.folds or None),
             ("--more-inputs", tuple(map(str, self.more_inputs)) or None)))]


def add_commands(commands: argparse._SubParsersAction) -> None:
    _add_segment(commands)
    _add_train(commands)
    add_fill(commands)


def _add_segment(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("segment", help="segment a volume into a label map",
                                 description="Segment a NIfTI/NRRD/MHA file or DICOM folder into a label map.")
    parser.add_argument("input", nargs="?", help="image file or DICOM folder")
    parser.add_argument("output", nargs="?",
                        help="label map file (.nii.gz, .nrrd, .mha); a .labels.json names its labels")
    parser.add_argument("--model", default=None, help="catalog id, library id, model file or MONAI bundle folder "
                        "(default: the catalog's default segmentation model)")
    add_device(parser)
    add_server(parser)
    parser.add_argument("--no-compress", action="store_true",
                        help="write the label map uncompressed (faster; used by Slicer's background worker)")
    parser.add_argument("--more-inputs", nargs="+", default=[], metavar="IMAGE",
                        help="the further input channels of a multi-channel model, in its order (`meddl models "
                             "info` lists them); each is resampled onto the first input's grid")
    parser.add_argument("--fast", action="store_true",
                        help="skip test-time augmentation (nnU-Net's mirroring): about 4-8x faster, slightly "
                             "less accurate")
    parser.add_argument("--folds", nargs="+", default=[], metavar="FOLD",
                        help="nnU-Net models: the folds to ensemble (default: all in the folder), e.g. 0 1 or all")
    add_trust(parser)
    add_progress(parser)
    add_batch_options(parser)
    parser.add_argument("--output-format", choices=LABEL_FORMATS, default=None,
                        help="--batch: label map files (nii.gz, the default; nrrd; mha) or DICOM Segmentation "
                             "objects referencing the DICOM inputs (dicom-seg; needs pip install \"meddl[dicom]\")")


def run_segment(args: argparse.Namespace, progress) -> SegmentResult | BatchResult:
    from ..segmentation.predict import labels_path_for, segment_file

    if check_batch_usage(args, ("input", "output")):
        if args.more_inputs:
            raise UsageError("--more-inputs is for one case: with --batch, give a CSV with one column per channel")
        task = SegmentCases(args.model, args.device, args.trust_model, args.fast,
                            tuple(args.folds) if args.folds else None, args.output_format or "nii.gz",
                            not args.no_compress)
        return run_cohort(task, args, progress)
    if args.output_format:
        raise UsageError("--output-format: only with --batch (one case's format follows the OUTPUT file name)")

    result = segment_file(args.input, args.output, args.model, args.device, progress, args.trust_model,
                          compress=not args.no_compress, fast=args.fast,
                          folds=tuple(args.folds) if args.folds else None, more_inputs=tuple(args.more_inputs))
    output = Path(args.output)
    return SegmentResult(str(output), str(labels_path_for(output)), result.card.name)


@dataclass(frozen=True)
class TrainResult(Result):
    bundle: str
    validation_dice: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    model_id: Optional[str] = None


@dataclass(frozen=True)
class TrainRequest(Request):
    """Train a segmentation model on (image, label map) files into a bundle folder or the model library."""

    command = "train"
    result_type = TrainResult
    file_inputs = ("images", "labels", "val_images", "val_labels", "init_from")
    file_outputs = ("out",)
    arg_names = {"time_budget_s": "time_budget"}
    images: tuple[str, ...]
    labels: tuple[str, ...]
    label_names: str
    out: Optional[str] = None
    install_as: Optional[str] = None
    val_images: tuple[str, ...] = ()
    val_labels: tuple[str, ...] = ()
    epochs: int = 20
    time_budget_s: Optional[float] = None
    validate_every: int = 5
    init_from: Optional[str] = None
    device: str = "auto"

    def argv(self) -> list[str]:
        return [self.command, *options(
            (("--images", self.images), ("--labels", self.labels), ("--label-names", self.label_names),
             ("--out", self.out), ("--install-as", self.install_as), ("--val-images", self.val_images or None),
             ("--val-labels", self.val_labels or None), ("--epochs", self.epochs),
             ("--time-budget", self.time_budget_s), ("--validate-every", self.validate_every),
             ("--init-from", self.init_from), ("--device", self.device)))]


def _add_train(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser("train", help="train (or fine-tune) a segmentation model into a MONAI bundle")
    train.add_argument("--images", nargs="+", required=True, help="training images")
    train.add_argument("--labels", nargs="+", required=True, help="their label maps, in the same order")
    train.add_argument("--label-names", required=True, help="label values and names, e.g. '1:Liver,2:Spleen'")
    where = train.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", help="new bundle folder")
    where.add_argument("--install-as", help="install the bundle in the model library under this id")
    train.add_argument("--val-images", nargs="*", default=[], help="validation images (Dice goes into the card)")
    train.add_argument("--val-labels", nargs="*", default=[])
    train.add_argument("--epochs", type=int_in(1, 100000), default=20)
    train.add_argument("--steps-per-epoch", type=int_in(1, 10**6), default=20)
    train.add_argument("--time-budget", type=number_in(0, 10**7, low_open=True), default=None,
                       help="stop after this many seconds")
    train.add_argument("--patch-size", default="auto", type=voxel_counts(3, keyword="auto"),
                       help="i,j,k voxels (default: about 64 mm per axis from the data's size and spacing)")
    train.add_argument("--batch-size", type=int_in(1, 4096), default=2)
    train.add_argument("--validate-every", type=int_in(1, 100000), default=5, help="epochs between validations")
    train.add_argument("--few-shot", choices=["auto", "off"], default="auto",
                       help="auto: when only a few slices are labelled, train slice by slice on those slices")
    train.add_argument("--init-from", default=None, help="fine-tune from this bundle or model")
    add_device(train)
    add_server(train)
    add_progress(train)


def _pairs(images: list[str], labels: list[str]) -> list:
    if len(images) != len(labels):
        raise InputError(f"{len(images)} images but {len(labels)} label maps")
    return [(read_image(image), read_image(label)) for image, label in zip(images, labels)]


def _destination(args: argparse.Namespace) -> tuple[Path, dict | None]:
    """The bundle folder, and the library record when it is trained straight into the model library."""
    if not args.install_as:
        with OutputSet(inputs=[*args.images, *args.labels]) as outputs:  # checked now, written as training goes
            return outputs.add_folder(args.out), None
    store.clean_stale()
    model_id = catalog.check_user_id(args.install_as, "--install-as")
    store.models_dir().mkdir(parents=True, exist_ok=True)
    record = {"id": model_id, "kind": "trained", "source": "meddl train", "model_path": ".", "trusted": False}
    return store.models_dir() / model_id, record


def run_train(args: argparse.Namespace, progress) -> TrainResult:
    from ..segmentation.training import SegmentationTrainingSettings, train_segmentation

    settings = SegmentationTrainingSettings(
        patch_size=None if args.patch_size == "auto" else args.patch_size,
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch, time_budget_s=args.time_budget, batch_size=args.batch_size,
        device=args.device, init_from=args.init_from, validate_every=args.validate_every, few_shot=args.few_shot)
    labels = parse_label_names(args.label_names, InputError)
    out, record = _destination(args)
    result = train_segmentation(_pairs(args.images, args.labels), labels, out, settings,
                                _pairs(args.val_images, args.val_labels) or None, progress,
                                data_description=f"{len(args.images)} image(s) given to meddl train",
                                install_record=record)
    return TrainResult(str(result.folder), result.validation_dice, result.history, args.install_as)


RUNNERS = {"segment": run_segment, "train": run_train, "fill": run_fill}
REQUESTS = (SegmentRequest, SegmentBatchRequest, TrainRequest, FillRequest)
