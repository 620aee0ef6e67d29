"""`meddl classify` and `meddl train-classifier` on the command line, and the classify worker request."""

from __future__ import annotations

import argparse
import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..batch.tasks import ClassifyCases
from ..errors import InputError, OutputError
from ..io import read_image, write_image
from ..models.formats import model_files
from ..outputs import OutputSet
from ..protocol import Request, Result, options
from .batch import BatchResult, UsageError, add_batch_options, check_batch_usage, run_cohort
from .options import add_device, add_progress, add_server, add_trust, int_in, number_in, voxel_counts


@dataclass(frozen=True)
class ClassifyResult(Result):
    csv: str
    saliency: list[str]
    rows: list[dict[str, Any]]


@dataclass(frozen=True)
class ClassifyRequest(Request):
    """Classify `inputs` into the table `csv`; Grad-CAM maps into the folder `saliency` when given."""

    command = "classify"
    result_type = ClassifyResult
    file_inputs = ("inputs",)
    file_outputs = ("csv", "saliency")
    inputs: tuple[str, ...]
    model: str
    csv: str
    saliency: Optional[str] = None
    class_name: Optional[str] = None
    device: str = "auto"
    trust_model: bool = False

    def argv(self) -> list[str]:
        return [self.command, *map(str, self.inputs), *options(
            (("--model", self.model), ("--csv", self.csv), ("--saliency", self.saliency),
             ("--class", self.class_name), ("--device", self.device), ("--trust-model", self.trust_model)))]


@dataclass(frozen=True)
class TrainClassifierResult(Result):
    model: str
    validation: dict[str, Any] = field(default_factory=dict)


def add_commands(commands: argparse._SubParsersAction) -> None:
    classify = commands.add_parser("classify", help="class probabilities for images (2D or 3D)")
    classify.add_argument("inputs", nargs="*", help="image files (NIfTI/NRRD/MHA, PNG/JPEG, DICOM) or DICOM folders")
    classify.add_argument("--model", required=True, help="classifier: catalog id, model file or bundle")
    classify.add_argument("--csv", default=None, help="output table: one row per input (with --batch: "
                          "classification.csv in the --out folder)")
    classify.add_argument("--saliency", default=None, help="folder for Grad-CAM maps (.nii.gz, input grid)")
    classify.add_argument("--class", dest="class_name", default=None, help="saliency class (default: predicted)")
    add_device(classify)
    add_server(classify)
    add_trust(classify)
    add_progress(classify)
    add_batch_options(classify)
    classify.add_argument("--batch-saliency", action="store_true",
                          help="--batch: also write each case's Grad-CAM map (CASE_saliency.nii.gz) into --out")
    train = commands.add_parser("train-classifier", help="train a classifier from a CSV of images and labels")
    train.add_argument("--csv", required=True, help="columns: image, label (class name) and optional split")
    train.add_argument("--out", required=True, help="new folder for model.pt, model.json and metrics")
    train.add_argument("--architecture", default="densenet", choices=["densenet", "resnet", "efficientnet"])
    train.add_argument("--size", default=None, type=voxel_counts(2, 3), help="input size, e.g. 64,64,64 or 224,224")
    train.add_argument("--epochs", type=int_in(1, 100000), default=30)
    train.add_argument("--batch-size", type=int_in(1, 4096), default=16)
    train.add_argument("--learning-rate", type=number_in(0, 10, low_open=True), default=1e-3)
    train.add_argument("--folds", type=int_in(0, 100), default=0,
                       help="k-fold cross-validation (default: held-out split)")
    train.add_argument("--validation-fraction", type=number_in(0, 0.9, low_open=True), default=0.2)
    train.add_argument("--patience", type=int_in(1, 100000), default=5,
                       help="early stopping: epochs without improvement")
    train.add_argument("--no-augment", action="store_true")
    train.add_argument("--no-class-weights", action="store_true")
    add_device(train)
    add_progress(train)


def saliency_names(inputs: list[str]) -> list[str]:
    """One map name per input: its file stem, with the input's position added where two stems are the same."""
    stems = [Path(path.rstrip("/\\")).name.split(".")[0] or "image" for path in inputs]
    names = [f"{stem}_{index + 1}_saliency.nii.gz" if stems.count(stem) > 1 else f"{stem}_saliency.nii.gz"
             for index, stem in enumerate(stems)]
    if len(set(names)) < len(names):  # a stem such as "a_1" met "a" twice: number every map by its input
        names = [f"{index + 1}_{stem}_saliency.nii.gz" for index, stem in enumerate(stems)]
    return names


def _declare_saliency(folder: Path, inputs: list[str], outputs: OutputSet) -> list[Path]:
    """The saliency maps' paths; a new folder is created whole with them, an existing one receives them."""
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"--saliency {folder}: a file is there; give a folder for the maps")
    if not folder.exists():
        outputs.staged(outputs.add_folder(folder)).mkdir()
    return [outputs.add(folder / name) for name in saliency_names(inputs)]


def run_classify(args: argparse.Namespace, progress) -> ClassifyResult | BatchResult:
    from ..classification.predict import classifier_model, classify, saliency

    if check_batch_usage(args, ("inputs", "csv"), ("saliency",)):
        task = ClassifyCases(args.model, args.device, args.trust_model, args.batch_saliency, args.class_name)
        return run_cohort(task, args, progress, allow_2d=True)
    if args.batch_saliency:
        raise UsageError("--batch-saliency: only with --batch (one run's maps go to --saliency FOLDER)")

    with OutputSet(inputs=[*args.inputs, *model_files(args.model)]) as outputs:
        output = outputs.add(args.csv)
        maps = _declare_saliency(Path(args.saliency), args.inputs, outputs) if args.saliency else []
        images = [read_image(path, allow_2d=True) for path in args.inputs]
        model = classifier_model(args.model, args.trust_model)  # loaded once for every image and map
        results = classify(images, model, args.device, args.inputs, progress=progress)
        for target, image, result in zip(maps, images, results):
            write_image(saliency(image, model, args.class_name or result.predicted, args.device), target,
                        outputs=outputs)
        rows = [result.as_row() for result in results]
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        outputs.staged(output).write_text(text.getvalue())
        outputs.commit()
    return ClassifyResult(str(output), [str(path) for path in maps], rows)


def read_training_csv(path: Path) -> tuple[list, list[int], list[str], list[str] | None]:
    """Images, label indices, class names (sorted) and the optional split column."""
    try:
        with open(path, newline="", encoding="utf-8") as stream:
            rows = list(csv.DictReader(stream))
    except OSError as error:
        raise InputError(f"cannot read {path}: {error.strerror}") from None
    except (UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"cannot read {path}: not a UTF-8 CSV table ({error})") from None
    if not rows or not {"image", "label"} <= set(rows[0]):
        raise InputError(f"{path} needs the columns 'image' and 'label' (and optionally 'split')")
    classes = sorted({row["label"] for row in rows})
    base = path.parent
    images = [read_image(base / row["image"] if not Path(row["image"]).is_absolute() else row["image"],
                         allow_2d=True) for row in rows]
    splits = [row["split"].strip().lower() for row in rows] if "split" in rows[0] else None
    return images, [classes.index(row["label"]) for row in rows], classes, splits


def run_train(args: argparse.Namespace, progress) -> TrainClassifierResult:
    from ..classification.training import TrainingSettings, train_classifier

    with OutputSet(inputs=[args.csv]) as outputs:  # checked before the images are read; written after training
        outputs.add_folder(args.out)
    images, labels, classes, splits = read_training_csv(Path(args.csv))
    if args.folds > len(images):
        raise InputError(f"--folds {args.folds}: there are only {len(images)} images to split")
    settings = TrainingSettings(
        architecture=args.architecture, input_size=args.size,
        epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate, folds=args.folds,
        validation_fraction=args.validation_fraction, patience=args.patience, augment=not args.no_augment,
        class_weights=not args.no_class_weights, device=args.device)
    result = train_classifier(images, labels, classes, Path(args.out), settings, splits, progress,
                              data_description=f"{len(images)} images listed in {Path(args.csv).name}")
    return TrainClassifierResult(str(result.folder / "model.pt"), result.validation)


RUNNERS = {"classify": run_classify, "train-classifier": run_train}
REQUESTS = (ClassifyRequest,)
