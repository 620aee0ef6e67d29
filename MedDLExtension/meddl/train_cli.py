"""`meddl train`: a segmentation model from image and label files, written as a MONAI bundle."""

from __future__ import annotations

import argparse
from pathlib import Path

from .errors import InputError
from .io import read_image
from .models.card import parse_label_names


def add_command(commands: argparse._SubParsersAction, add_progress) -> None:
    train = commands.add_parser("train", help="train (or fine-tune) a segmentation model into a MONAI bundle")
    train.add_argument("--images", nargs="+", required=True, help="training images")
    train.add_argument("--labels", nargs="+", required=True, help="their label maps, in the same order")
    train.add_argument("--label-names", required=True, help="label values and names, e.g. '1:Liver,2:Spleen'")
    where = train.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", help="new bundle folder")
    where.add_argument("--install-as", help="install the bundle in the model library under this id")
    train.add_argument("--val-images", nargs="*", default=[], help="validation images (Dice goes into the card)")
    train.add_argument("--val-labels", nargs="*", default=[])
    train.add_argument("--epochs", type=int, default=20)
    train.add_argument("--steps-per-epoch", type=int, default=20)
    train.add_argument("--time-budget", type=float, default=None, help="stop after this many seconds")
    train.add_argument("--patch-size", default="auto",
                       help="i,j,k voxels (default: about 64 mm per axis from the data's size and spacing)")
    train.add_argument("--batch-size", type=int, default=2)
    train.add_argument("--validate-every", type=int, default=5, help="epochs between validations")
    train.add_argument("--few-shot", choices=["auto", "off"], default="auto",
                       help="auto: when only a few slices are labelled, train slice by slice on those slices")
    train.add_argument("--init-from", default=None, help="fine-tune from this bundle or model")
    train.add_argument("--device", default="auto")
    add_progress(train)


def _pairs(images: list[str], labels: list[str]) -> list:
    if len(images) != len(labels):
        raise InputError(f"{len(images)} images but {len(labels)} label maps")
    return [(read_image(image), read_image(label)) for image, label in zip(images, labels)]


def _destination(args: argparse.Namespace) -> tuple[Path, dict | None]:
    """The bundle folder, and the library record when it is trained straight into the model library."""
    if not args.install_as:
        return Path(args.out), None
    from .library import store

    store.clean_stale()
    model_id = store.check_new_id(args.install_as)
    store.models_dir().mkdir(parents=True, exist_ok=True)
    record = {"id": model_id, "kind": "trained", "source": "meddl train", "model_path": ".", "trusted": False}
    return store.models_dir() / model_id, record


def run_train(args: argparse.Namespace, progress) -> dict:
    from .training.segmentation import SegmentationTrainingSettings, train_segmentation

    settings = SegmentationTrainingSettings(
        patch_size=None if args.patch_size == "auto" else tuple(int(n) for n in args.patch_size.split(",")),
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch, time_budget_s=args.time_budget, batch_size=args.batch_size,
        device=args.device, init_from=args.init_from, validate_every=args.validate_every, few_shot=args.few_shot)
    labels = parse_label_names(args.label_names, InputError)
    out, record = _destination(args)
    result = train_segmentation(_pairs(args.images, args.labels), labels, out, settings,
                                _pairs(args.val_images, args.val_labels) or None, progress,
                                data_description=f"{len(args.images)} image(s) given to meddl train",
                                install_record=record)
    return {"outputs": {"bundle": str(result.folder)}, "validation_dice": result.validation_dice,
            "history": result.history, "model_id": args.install_as}
