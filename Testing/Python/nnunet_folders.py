"""Genuine nnU-Net v2 results folders made by nnU-Net's own pipeline, built once and cached.

A small real dataset (the MNI152 T1 from the nilearn wheel at 3 mm, labels 1 = grey, 2 = white matter, five
cases made by crops and flips) goes through nnU-Net's fingerprint extraction, experiment planning and
preprocessing, then the stock `nnUNetTrainer` runs a few iterations on the CPU and writes
`fold_X/checkpoint_final.pth`. The plans, dataset.json and checkpoints are nnU-Net's own; only the weights
are barely trained (enough that a training case's prediction holds both labels). The "cascade" kind is planned
by nnU-Net with a small GPU memory target, so that its planner adds 3d_lowres and 3d_cascade_fullres; the
first stage trains on fold "all" and its validation writes the predictions the second stage trains on.

Each kind is built in a temporary folder and renamed into the cache when complete, so an interrupted run leaves
nothing half-made. The cache is keyed by nnunetv2's version and FOLDERS_VERSION; it lives in $MEDDL_TEST_CACHE,
else in <repo>/.venv/meddl-test-cache (the venv is rebuilt when dependencies change).

`reference_labels` predicts with nnU-Net's own `nnUNetPredictor`, the reference MedDL's runner must match.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

FOLDERS_VERSION = 1
PLANS = "nnUNetPlans"
TRAINER = "nnUNetTrainer"

# kind -> (dataset id, configuration, folds, channels, region-based)
KINDS = {
    "3d": (901, "3d_fullres", (0,), 1, False),
    "3d-2folds": (902, "3d_fullres", (0, 1), 1, False),
    "2d": (903, "2d", (0,), 1, False),
    "two-channel": (904, "3d_fullres", (0,), 2, False),
    "regions": (905, "3d_fullres", (0,), 1, True),
    "cascade": (906, "3d_cascade_fullres", ("all",), 1, False),
}
# nnU-Net plans a 3d_lowres stage and a 3d_cascade_fullres after it only where the full-resolution patch covers
# under a quarter of the median image: with this GPU memory target its own planner does so for this dataset
PLANNER_GPU_GB = {"cascade": 0.05}
# training iterations per fold: enough that a training case's prediction holds labels 1 and 2
ITERATIONS = {"3d": 5, "3d-2folds": 5, "2d": 5, "two-channel": 5, "regions": 5, "cascade": 5}
# kinds whose folds also run nnU-Net's validation (20 s a 3d fold on CPU, 2 min for 2d): the others have no
# fold_X/validation folder, so export_zip needs "3d"
VALIDATED = {"3d"}
SPACING_MM = 3.0

# set while building: n_proc_DA and compile are read when training; nnUNet_def_n_proc only when
# nnunetv2.configuration is first imported (if something imported it earlier, validation spawns 8 workers)
N_PROC_DA = "nnUNet_n_proc_DA"  # 0: data augmentation in the main process (SingleThreadedAugmenter)
NNUNET_ENV = {N_PROC_DA: "0", "nnUNet_compile": "false", "nnUNet_def_n_proc": "1"}


def cache_root() -> Path:
    """$MEDDL_TEST_CACHE, else the user's cache folder (~/.cache/meddl-tests; outside the checkout, so a fresh
    clone's `make test` reuses what an earlier run built), with a folder per nnunetv2 version and FOLDERS_VERSION."""
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "meddl-tests"
    base = Path(os.environ.get("MEDDL_TEST_CACHE") or default)
    return base / f"nnunet-{version('nnunetv2')}-folders{FOLDERS_VERSION}"


@contextlib.contextmanager
def nnunet_environment(root: Path | None = None, results: Path | None = None):
    """nnU-Net's environment variables (paths under `root` when given), restored afterwards.

    nnunetv2 2.8 reads nnUNet_raw/_preprocessed/_results when it uses them (paths._EnvPath), so they can
    change between builds in one process.
    """
    values = dict(NNUNET_ENV)
    if root is not None:
        values.update({name: str(root / name) for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")})
    if results is not None:
        values["nnUNet_results"] = str(results)
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def dataset_name(kind: str) -> str:
    return f"Dataset{KINDS[kind][0]:03d}_MNITissue{kind.replace('-', '').title()}"


def results_folder_of(root: Path, kind: str, configuration: str | None = None) -> Path:
    configuration = configuration or KINDS[kind][1]
    return root / "nnUNet_results" / dataset_name(kind) / f"{TRAINER}__{PLANS}__{configuration}"


def _stages(kind: str) -> list[tuple[str, bool]]:
    """(configuration, run nnU-Net's validation) in training order. A cascade's first stage is validated: that
    writes its predictions for the second stage (predicted_next_stage), which trains on them."""
    configuration = KINDS[kind][1]
    if kind == "cascade":
        return [("3d_lowres", True), (configuration, False)]
    return [(configuration, kind in VALIDATED)]


def make_results_folder(cache: Path | None, kind: str) -> Path:
    """The `DatasetNNN_Name/nnUNetTrainer__nnUNetPlans__configuration` folder of `kind`, built on first use."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; one of {sorted(KINDS)}")
    cache = Path(cache) if cache is not None else cache_root()
    final = cache / kind
    if not final.is_dir():
        cache.mkdir(parents=True, exist_ok=True)
        for stale in cache.glob(f".{kind}-*"):  # left by a killed build (a build takes minutes)
            if time.time() - stale.stat().st_mtime > 3600:
                shutil.rmtree(stale, ignore_errors=True)
        building = Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=cache))
        try:
            _build(building, kind)
            try:
                building.rename(final)
            except OSError:  # another session finished the same kind first
                if not final.is_dir():
                    raise
        finally:
            shutil.rmtree(building, ignore_errors=True)
    return results_folder_of(final, kind)


def raw_cases(results_folder: Path) -> dict[str, list[Path]]:
    """Case identifier -> its input files (imagesTr, channel order) of the dataset a results folder was trained on."""
    root = Path(results_folder).parents[2]
    images = root / "nnUNet_raw" / Path(results_folder).parent.name / "imagesTr"
    cases: dict[str, list[Path]] = {}
    for path in sorted(images.glob("*.nii.gz")):
        cases.setdefault(path.name[: -len("_0000.nii.gz")], []).append(path)
    return cases


def raw_label(results_folder: Path, case: str) -> Path:
    root = Path(results_folder).parents[2]
    return root / "nnUNet_raw" / Path(results_folder).parent.name / "labelsTr" / f"{case}.nii.gz"


# ----------------------------------------------------------------------------------------------------------------
# dataset


def _mni_at_3mm():
    """T1 (float32), labels (uint8: 1 grey, 2 white matter) at SPACING_MM, cropped to the brain plus a margin."""
    import SimpleITK as sitk
    from meddl.sample_data import mni152_paths

    paths = mni152_paths()
    t1 = sitk.ReadImage(str(paths["t1"]), sitk.sitkFloat32)
    size = [int(round(n * s / SPACING_MM)) for n, s in zip(t1.GetSize(), t1.GetSpacing())]

    def resample(image):
        return sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), (SPACING_MM,) * 3,
                             image.GetDirection(), 0.0, sitk.sitkFloat32)

    t1 = resample(t1)
    # nilearn stores the probabilities as uint8 0..255
    grey, white = (sitk.GetArrayFromImage(resample(sitk.ReadImage(str(paths[key]), sitk.sitkFloat32))) / 255.0
                   for key in ("gm", "wm"))
    labels = np.zeros(grey.shape, np.uint8)
    labels[(grey > 0.5) & (grey >= white)] = 1
    labels[(white > 0.5) & (white > grey)] = 2
    label_image = sitk.GetImageFromArray(labels)
    label_image.CopyInformation(t1)
    # brain bounding box (index order x, y, z) plus two voxels
    k, j, i = np.nonzero((grey + white) > 0.5)
    low = [max(int(a.min()) - 2, 0) for a in (i, j, k)]
    high = [min(int(a.max()) + 3, n) for a, n in zip((i, j, k), t1.GetSize())]
    crop = tuple(slice(a, b) for a, b in zip(low, high))
    return t1[crop], label_image[crop]


def _cases(t1, labels):
    """Five cases (enough for nnU-Net's default 5-fold split): the volume, flips and crops."""
    import SimpleITK as sitk

    nx, ny, nz = t1.GetSize()
    views = {
        "mni_000": lambda im: im,
        "mni_001": lambda im: sitk.Flip(im, [True, False, False]),
        "mni_002": lambda im: im[:, :, nz // 5:],
        "mni_003": lambda im: sitk.Flip(im[:, ny // 6:, :], [True, False, False]),
        "mni_004": lambda im: im[nx // 8: nx - nx // 8, :, : nz - nz // 6],
    }
    return {case: (view(t1), view(labels)) for case, view in views.items()}


def _write_raw(raw: Path, kind: str) -> None:
    import SimpleITK as sitk

    _, _, _, channels, regions = KINDS[kind]
    folder = raw / dataset_name(kind)
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    cases = _cases(*_mni_at_3mm())
    for case, (t1, label) in cases.items():
        images = [t1]
        if channels == 2:
            images.append(sitk.SmoothingRecursiveGaussian(t1, 2 * SPACING_MM))
        for c, image in enumerate(images):
            sitk.WriteImage(image, str(folder / "imagesTr" / f"{case}_{c:04d}.nii.gz"))
        sitk.WriteImage(label, str(folder / "labelsTr" / f"{case}.nii.gz"))
    if regions:
        label_names = {"background": 0, "brain": [1, 2], "white matter": 2}
    else:
        label_names = {"background": 0, "grey matter": 1, "white matter": 2}
    dataset = {
        "name": dataset_name(kind),
        "description": "MNI152 2009a T1 (nilearn) at 3 mm, grey/white matter probability > 0.5",
        "channel_names": {"0": "T1", "1": "T1 blurred"} if channels == 2 else {"0": "T1"},
        "labels": label_names,
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
    }
    if regions:
        dataset["regions_class_order"] = [1, 2]
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))


def _build(root: Path, kind: str) -> None:
    dataset_id, configuration, folds, _, _ = KINDS[kind]
    start = time.perf_counter()
    with nnunet_environment(root):
        from nnunetv2.experiment_planning.plan_and_preprocess_api import (
            extract_fingerprints,
            plan_experiments,
            preprocess,
        )

        _write_raw(root / "nnUNet_raw", kind)
        extract_fingerprints([dataset_id], num_processes=1, check_dataset_integrity=True, show_progress_bar=False)
        # the planner calls torch.set_num_threads(nnUNet_n_proc_DA), which refuses 0; training needs 0
        os.environ[N_PROC_DA] = "1"
        plans_identifier = plan_experiments([dataset_id], gpu_memory_target_in_gb=PLANNER_GPU_GB.get(kind))
        os.environ[N_PROC_DA] = NNUNET_ENV[N_PROC_DA]
        # a cascade's second stage uses the 3d_fullres data
        data = tuple(dict.fromkeys(name.replace("3d_cascade_fullres", "3d_fullres") for name, _ in _stages(kind)))
        preprocess([dataset_id], plans_identifier, configurations=data, num_processes=(1,) * len(data),
                   show_progress_bar=False)
        for stage, validate in _stages(kind):
            for fold in folds:
                _train(dataset_id, stage, fold, plans_identifier, kind, validate)
    folder = results_folder_of(root, kind)
    case = training_case(folder)
    labels, _ = reference_labels(folder, raw_cases(folder)[case], folds, mirroring=False,
                                 output_folder=root / "sanity-check")
    found = set(np.unique(labels).tolist())
    if not {1, 2} <= found:
        raise RuntimeError(f"nnU-Net {kind} trained too briefly: labels {sorted(found)} on training case {case}")
    shutil.rmtree(root / "sanity-check")
    (root / "build-seconds.txt").write_text(f"{time.perf_counter() - start:.1f}\n")


def _train(dataset_id: int, configuration: str, fold, plans_identifier: str, kind: str, validate: bool) -> None:
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args

    trainer = get_trainer_from_args(str(dataset_id), configuration, fold, TRAINER, plans_identifier,
                                    device=torch.device("cpu"))
    trainer.num_epochs = 1
    trainer.num_iterations_per_epoch = ITERATIONS[kind]
    trainer.num_val_iterations_per_epoch = 1
    trainer.run_training()
    if validate:  # fold_X/validation/summary.json (nnUNetv2_export_model_to_zip requires it), next-stage inputs
        trainer.perform_actual_validation(False)
    if kind != "3d":  # identical to checkpoint_final after one epoch; 45 MB each
        (Path(trainer.output_folder) / "checkpoint_best.pth").unlink()


def training_case(results_folder: Path, fold: int = 0) -> str:
    """A case fold `fold` trained on (nnU-Net's splits_final.json; fold "all" trains on every case)."""
    if (Path(results_folder) / "fold_all").is_dir():
        return sorted(raw_cases(results_folder))[0]
    root = Path(results_folder).parents[2]
    splits = root / "nnUNet_preprocessed" / Path(results_folder).parent.name / "splits_final.json"
    return sorted(json.loads(splits.read_text())[fold]["train"])[0]


# ----------------------------------------------------------------------------------------------------------------
# reference prediction and export


def reference_labels(results_folder: Path, input_files: list[Path], folds=(0,), mirroring: bool = True,
                     output_folder: Path | None = None) -> tuple[np.ndarray, Path]:
    """nnU-Net's own prediction: the label map it writes (array in k, j, i order) and the written file.

    For a cascade, as `nnUNetv2_predict` runs one: the first stage's labels are written, read back with the
    dataset's reader (read_seg) and given to the second stage's predictor."""
    import SimpleITK as sitk

    if output_folder is None:
        output_folder = tempfile.mkdtemp(prefix="nnunet-reference-")
    output_folder = Path(output_folder)
    case = Path(input_files[0]).name[: -len("_0000.nii.gz")]
    with nnunet_environment():
        from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

        predictor = _predictor(results_folder, folds, mirroring)
        data, properties = SimpleITKIO().read_images([str(f) for f in input_files])
        previous = None
        first_stage = predictor.configuration_manager.previous_stage_name
        if first_stage:
            first_folder = Path(results_folder).parent / f"{TRAINER}__{PLANS}__{first_stage}"
            path = _predict(_predictor(first_folder, folds, mirroring), data, dict(properties), None,
                            output_folder / first_stage, case)
            previous, _ = SimpleITKIO().read_seg(str(path))
        path = _predict(predictor, data, properties, previous, output_folder, case)
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))), path


def _predictor(results_folder: Path, folds, mirroring: bool):
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring,
                                device=torch.device("cpu"), perform_everything_on_device=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(results_folder), use_folds=tuple(folds),
                                                   checkpoint_name="checkpoint_final.pth")
    return predictor


def _predict(predictor, data, properties: dict, previous, output_folder: Path, case: str) -> Path:
    output_folder.mkdir(parents=True, exist_ok=True)
    predictor.predict_single_npy_array(data, properties, previous, str(output_folder / case), False)
    return output_folder / f"{case}{predictor.dataset_json['file_ending']}"


def export_zip(results_folder_parent: Path, zip_path: Path, configurations=None, folds=None) -> Path:
    """What `nnUNetv2_export_model_to_zip` makes, through nnU-Net's own export_pretrained_model.

    `results_folder_parent` is the DatasetNNN_Name folder; configurations and folds default to those trained there.
    """
    parent = Path(results_folder_parent)
    trained = sorted(p for p in parent.iterdir() if p.is_dir() and p.name.startswith(f"{TRAINER}__{PLANS}__"))
    if configurations is None:
        configurations = tuple(p.name.split("__")[-1] for p in trained)
    if folds is None:
        folds = tuple(sorted(int(f.name[5:]) for f in trained[0].glob("fold_[0-9]*")))
    # export_pretrained_model names the zip members relative to nnUNet_results
    with nnunet_environment(results=parent.parent):
        from nnunetv2.model_sharing.model_export import export_pretrained_model

        export_pretrained_model(parent.name, str(zip_path), configurations=tuple(configurations), trainer=TRAINER,
                                plans_identifier=PLANS, folds=tuple(folds), strict=True)
    return Path(zip_path)
