"""Running a trusted MONAI bundle the way MONAI runs it: `monai.bundle.ConfigWorkflow` (workflow type "infer").

The bundle's own preprocessing, network, inferer, postprocessing, `$` expressions and `scripts/` folder run; MedDL
writes the input as temporary NIfTI files with its exact geometry (one file a channel, in the model's order), gives
them to the bundle through `dataset#data` (a registration bundle's fixed and moving images under the keys its
metadata names), points `output_dir` at a private temporary folder, and takes the postprocessed `pred` of each
iteration from the evaluator (what the bundle's SaveImaged writes). The task's code maps that onto MedDL's results
(segmentation.bundle_run, registration.bundle_run).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import SimpleITK as sitk

from ..device import Compute
from ..errors import DeviceError, MeddlError, ModelError
from ..image import Image
from ..io import image_to_sitk
from ..progress import Progress, no_progress
from .loaded import LoadedModel, is_out_of_memory

CONFIG_NAMES = ("inference.json", "inference.yaml", "inference.yml")
INFER_IDS = ("network_def", "inferer", "dataset", "evaluator")  # what MONAI's "infer" workflow requires
RUN_IDS = ("run", "evaluating")  # the Zoo's names for the expressions that run the evaluator
TASK_OUTPUTS = {"segmentation": "label map or binary channels -> segments",
                "classification": "class probabilities -> classes",
                "registration": "dense displacement field (fixed -> moving) -> displacement-field transform"}
# Python packages a bundle's metadata may ask for under a name that differs from the module's
MODULE_NAMES = {"pytorch-ignite": "ignite", "scikit-image": "skimage", "scikit-learn": "sklearn",
                "pyyaml": "yaml", "pillow": "PIL", "cucim-cu12": "cucim", "nvidia-dali-cuda110": "nvidia.dali"}
OPTIONAL_PACKAGES = ("tensorboard", "mlflow", "fire", "cucim", "cucim-cu12", "matplotlib", "pandas", "pytorch-ignite")


def config_path(folder: Path) -> Optional[Path]:
    """The bundle's inference config (JSON or YAML), or None."""
    return next((folder / "configs" / name for name in CONFIG_NAMES if (folder / "configs" / name).is_file()), None)


def read_config(path: Path) -> dict[str, Any]:
    """An inference config as a dictionary (YAML through MONAI's own reader)."""
    try:
        if path.suffix == ".json":
            config = json.loads(path.read_text(encoding="utf-8"))
        else:
            from monai.bundle import ConfigParser

            config = ConfigParser.load_config_file(str(path))
    except Exception as error:  # JSON, YAML and file errors alike
        raise ModelError(f"bundle config {path} cannot be read: {error}") from None
    if not isinstance(config, dict):
        raise ModelError(f"bundle config {path} is not a mapping of ids to values")
    return config


def run_id(config: dict[str, Any]) -> Optional[str]:
    return next((name for name in RUN_IDS if name in config), None)


def is_workflow(config: dict[str, Any]) -> bool:
    """Whether a config is a complete MONAI inference workflow (else MedDL runs only its network)."""
    return all(name in config for name in INFER_IDS) and run_id(config) is not None


def _purge_scripts() -> None:
    for name in [name for name in sys.modules if name == "scripts" or name.startswith("scripts.")]:
        del sys.modules[name]


@contextlib.contextmanager
def bundle_on_path(folder: Path) -> Iterator[None]:
    """The bundle folder first on sys.path (its `scripts` package importable before initialize()); afterwards the
    folder leaves sys.path (ConfigWorkflow.run adds it too) and every `scripts` module leaves sys.modules, so the
    next bundle's `scripts` is its own."""
    entry = str(folder)
    _purge_scripts()
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        while entry in sys.path:
            sys.path.remove(entry)
        _purge_scripts()
        importlib.invalidate_caches()


def missing_packages(metadata: dict[str, Any]) -> list[str]:
    """Packages the bundle's metadata requires that cannot be imported here."""
    wanted = {**metadata.get("required_packages_version", {}), **metadata.get("optional_packages_version", {})}
    missing = []
    for package in wanted:
        module = MODULE_NAMES.get(package.lower(), package.replace("-", "_"))
        if package.lower() not in OPTIONAL_PACKAGES and importlib.util.find_spec(module.split(".")[0]) is None:
            missing.append(package)
    return missing


def _root_cause(error: BaseException) -> BaseException:
    """The error that started it all (MONAI wraps what a config expression raises in its own errors)."""
    seen = {id(error)}
    while (error.__cause__ or error.__context__) is not None and id(error.__cause__ or error.__context__) not in seen:
        error = error.__cause__ or error.__context__
        seen.add(id(error))
    return error


@contextlib.contextmanager
def bundle_failures(name: str) -> Iterator[None]:
    """What a bundle's workflow raises becomes one ModelError line naming the original error (out of memory: a
    DeviceError); MedDL's own errors pass."""
    try:
        yield
    except MeddlError:
        raise
    except Exception as error:
        root = _root_cause(error)
        detail = " ".join(f"{type(root).__name__}: {root}".split())[:400]
        if is_out_of_memory(root):
            raise DeviceError(f"out of memory running bundle {name!r} ({detail}): try --device cpu or a smaller "
                              "image") from None
        raise ModelError(f"bundle {name!r} failed: {detail}") from None


@dataclass(frozen=True)
class WorkflowOutput:
    """The postprocessed `pred` of one input, its affine (RAS, as MONAI reads it) and the input files' affine."""

    pred: np.ndarray
    affine: Optional[np.ndarray]
    input_affine: np.ndarray
    input_shape: tuple[int, ...]


def write_inputs(image: Image, folder: Path, spatial_dims: int, prefix: str = "input") -> list[Path]:
    """One NIfTI file a channel, with the image's exact geometry; a 2D model gets 2D files of a single slice."""
    channels = [image.array[..., c] for c in range(image.array.shape[-1])] if image.array.ndim == 4 else [image.array]
    paths = []
    for index, channel in enumerate(channels):
        volume = image_to_sitk(image.with_array(np.ascontiguousarray(channel, dtype=np.float32)))
        if spatial_dims == 2:
            if volume.GetSize()[2] != 1:
                raise ModelError(f"this 2D model needs a single-slice image, not {volume.GetSize()[2]} slices")
            volume = volume[:, :, 0]
        paths.append(folder / f"{prefix}_{index}.nii.gz")
        sitk.WriteImage(volume, str(paths[-1]))
    return paths


def _data_item(inputs: dict[str, list[Path]]) -> dict[str, Any]:
    """The one item of `dataset#data`: each input key's file (a list of files for a multi-channel input)."""
    return {key: str(paths[0]) if len(paths) == 1 else [str(path) for path in paths] for key, paths in inputs.items()}


def _overrides(config: dict[str, Any], folder: Path, work: Path, inputs: dict[str, list[Path]],
               compute: Compute) -> dict[str, Any]:
    """What MedDL sets in the bundle's config: its input, private folders, the device, no worker processes."""
    if not isinstance(config.get("dataset"), dict) or "data" not in config["dataset"]:
        raise ModelError(f"bundle {folder}: its dataset has no 'data' MedDL could give the input to")
    overrides: dict[str, Any] = {
        "bundle_root": str(folder), "output_dir": str(work / "output"), "dataset_dir": str(work),
        "dataset#data": [_data_item(inputs)], "device": f"$torch.device('{compute.device}')",
    }
    if isinstance(config.get("dataloader"), dict):
        overrides["dataloader#num_workers"] = 0
    if isinstance(config.get("evaluator"), dict) and compute.device.type != "cuda":
        overrides["evaluator#amp"] = False  # MONAI's autocast is for CUDA
    return overrides


def _attach(evaluator: Any, outputs: list, report: Progress) -> None:
    """Collect every iteration's postprocessed output and report progress per batch (ignite events)."""
    from ignite.engine import Events

    def collect(engine: Any) -> None:
        output = engine.state.output
        outputs.extend(output if isinstance(output, list) else [output])
        length = engine.state.epoch_length or 1
        report(0.3 + 0.65 * engine.state.iteration / length, f"batch {engine.state.iteration} of {length}")

    evaluator.add_event_handler(Events.ITERATION_COMPLETED, collect)


def _write_all(images: Mapping[str, Image], work: Path, spatial_dims: int) -> dict[str, list[Path]]:
    """Each named input's files (one a channel), prefixed by its position so that names never clash."""
    return {key: write_inputs(image, work, spatial_dims, f"input{position}" if len(images) > 1 else "input")
            for position, (key, image) in enumerate(images.items())}


def run_workflow(loaded: LoadedModel, image: Image | Mapping[str, Image], compute: Compute,
                 progress: Optional[Progress] = None, output_key: str = "pred") -> WorkflowOutput:
    """Run a bundle's inference workflow on one image (channels in the model's order), or on several named inputs
    (e.g. a registration bundle's fixed and moving images: {key: image}, the first the reference), and return its
    postprocessed `output_key` (else `pred`) with the first input's geometry."""
    import nibabel

    report = progress or no_progress
    folder, config_file = Path(loaded.pipeline["folder"]), Path(loaded.pipeline["config"])
    metadata = json.loads((folder / "configs" / "metadata.json").read_text(encoding="utf-8"))
    missing = missing_packages(metadata)
    if missing:
        raise ModelError(f"bundle {loaded.card.name!r} needs the Python package(s) {', '.join(missing)}: "
                         f"install them (pip install {' '.join(missing)}) and run it again")
    if importlib.util.find_spec("ignite") is None:
        raise ModelError("MONAI bundle workflows need pytorch-ignite: pip install pytorch-ignite (meddl[bundles])")
    config = read_config(config_file)
    with tempfile.TemporaryDirectory(prefix="meddl-bundle-") as temporary:
        work = Path(temporary)
        images = image if isinstance(image, Mapping) else {loaded.pipeline["image_key"]: image}
        inputs = _write_all(images, work, loaded.card.spatial_dims)
        outputs: list = []
        report(0.05, "starting the bundle's workflow (MONAI)")
        with bundle_on_path(folder), bundle_failures(loaded.card.name):
            workflow = _workflow(config, config_file, folder, work, inputs, compute)
            report(0.25, "bundle initialised")
            _attach(workflow.evaluator, outputs, report)
            workflow.run()
            workflow.finalize()
        key = output_key if outputs and isinstance(outputs[0], dict) and output_key in outputs[0] else "pred"
        if not outputs or not isinstance(outputs[0], dict) or key not in outputs[0]:
            raise ModelError(f"bundle {loaded.card.name!r} produced no {output_key!r} output")
        reference = nibabel.load(str(next(iter(inputs.values()))[0]))
        pred = outputs[0][key]
        affine = getattr(pred, "affine", None)
        report(0.97, "bundle finished")
        return WorkflowOutput(np.asarray(pred.detach().cpu().numpy() if hasattr(pred, "detach") else pred),
                              None if affine is None else np.asarray(affine.cpu().numpy(), dtype=np.float64),
                              np.asarray(reference.affine, dtype=np.float64), tuple(reference.shape))


def _workflow(config: dict[str, Any], config_file: Path, folder: Path, work: Path, inputs: dict[str, list[Path]],
              compute: Compute) -> Any:
    """The initialised ConfigWorkflow, refused with the missing ids when it lacks what "infer" requires."""
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(config_file=str(config_file), meta_file=str(folder / "configs" / "metadata.json"),
                              logging_file=False, workflow_type="infer", run_id=run_id(config),
                              **_overrides(config, folder, work, inputs, compute))
    workflow.initialize()
    missing = workflow.check_properties()
    if missing:
        raise ModelError(f"bundle {folder} lacks what MONAI's inference workflow requires: {', '.join(missing)}")
    return workflow
