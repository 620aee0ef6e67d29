"""A promptable segmentation session on an nnInteractive model folder, run by the `nninteractive` package.

The folder (plans.json, dataset.json, fold_N/checkpoint_final.pth, inference_info.json or the legacy
inference_session_class.json, LICENSE) is read by MedDL: the checkpoint is unpickled with MedDL's nnU-Net
allow-list (anything needing code only when trusted) and the network built from the plans as nnInteractive's
own trainer stub builds it; the package's session then gets these artifacts (`initialize_from_loaded_artifacts`).

Axes: the package's (1, x, y, z) arrays are nnU-Net's nominal names for the array axes of SimpleITK's numpy
view, (k, j, i), on which nnInteractive was trained; MedDL's arrays are (k, j, i), so image, prompts and labels
pass unchanged. Prompts are physical positions (RAS by default, or LPS) mapped to voxels by `prompts`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..errors import InputError, ModelError
from ..image import Image, check_scalar_volume
from ..models import nnunet
from ..models.formats import PROMPTABLE_METADATA
from . import prompts
from .session import InteractionResult, PromptSession, package_quietly, seed_mask

CHECKPOINT = "checkpoint_final.pth"
METADATA = PROMPTABLE_METADATA


def _require_package() -> None:
    try:
        import nnInteractive.inference.inference_session  # noqa: F401
    except ImportError:
        raise ModelError("this is an nnInteractive model: MedDL runs it with the nninteractive package, which is "
                         "not installed (`pip install meddl[interactive]`)") from None


def check_model_folder(folder: Path, fold: Optional[str] = None) -> Path:
    """The checkpoint of an nnInteractive model folder; ModelError naming what is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"nnInteractive model folder {folder} does not exist or is not a folder")
    missing = [name for name in ("plans.json", "dataset.json") if not (folder / name).is_file()]
    if not any((folder / name).is_file() for name in METADATA):
        missing.append(" or ".join(METADATA))
    folds = sorted(p.name for p in folder.glob("fold_*") if (p / CHECKPOINT).is_file())
    chosen = f"fold_{fold}" if fold is not None else (folds[0] if len(folds) == 1 else None)
    if chosen is None or chosen not in folds:
        missing.append(f"fold_{fold if fold is not None else '<n>'}/{CHECKPOINT}"
                       + (f" (folds here: {', '.join(folds)}; choose one)" if len(folds) > 1 else ""))
    if missing:
        raise ModelError(f"{folder} is not an nnInteractive model folder: missing {', '.join(missing)}")
    return folder / chosen / CHECKPOINT


def _network(session: Any, folder: Path, checkpoint: dict, trust: bool) -> dict:
    """The artifacts the package's session takes: its runtime settings and the network built from the plans."""
    from nnInteractive.interaction.point import PointInteraction_stub
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    try:
        capability, radius, thickness, decay, pad_mode = session._load_capability_and_runtime_defaults(str(folder))
        session._apply_capability(capability)
    except (RuntimeError, ValueError, TypeError, AttributeError) as error:
        raise ModelError(f"{folder}: its inference metadata is not usable by nninteractive: {error}") from None
    read = nnunet.read_plans(folder, str(checkpoint.get("init_args", {}).get("configuration", "")), trust)
    plans_manager, configuration_manager = read.plans_manager, read.configuration_manager
    channels = determine_num_input_channels(plans_manager, configuration_manager, read.dataset)
    try:  # nnInteractiveTrainer_stub's network: nnU-Net's, with the interaction channels and 2 outputs
        network = nnUNetTrainer.build_network_architecture(
            plans_manager, configuration_manager, channels + session.num_interaction_channels, 2,
            enable_deep_supervision=False).to(session.device)
        network.load_state_dict(checkpoint["network_weights"])
    except Exception as error:  # noqa: BLE001 - plans and weights that do not fit
        raise ModelError(f"the network of {folder} cannot be built from its plans and weights: {error}") from None
    return {"capability_content": capability, "point_interaction": PointInteraction_stub(radius, True),
            "preferred_scribble_thickness": thickness, "interaction_decay": decay, "pad_mode_data": pad_mode,
            "network": network.eval(), "plans_manager": plans_manager,
            "configuration_manager": configuration_manager, "dataset_json": read.dataset,
            "trainer_name": str(checkpoint.get("trainer_name", "")), "label_manager": read.label_manager,
            "license": session._load_license(str(folder), read.plans, checkpoint)}


class InteractiveSession(PromptSession):
    """nnInteractive: points, boxes, scribbles and lassos in physical space on one image, in 3D."""

    family = "nnInteractive"
    kinds = ("point", "box", "scribble", "lasso")

    def __init__(self, folder: str | Path, trust: bool = False, device: str = "cpu", seed: int = 0,
                 fold: Optional[str] = None, storage: str = "auto") -> None:
        """Open an nnInteractive model folder (see the module docstring); nothing from it runs code unless
        `trust`. `seed` makes the package's random choices repeatable, per session."""
        _require_package()
        from nnInteractive.inference.inference_session import nnInteractiveInferenceSession

        self.folder = Path(folder)
        checkpoint = nnunet.load_checkpoint(check_model_folder(self.folder, fold), trust)
        self._threads = torch.get_num_threads()
        self._seed = seed
        self._numpy_state = np.random.RandomState(seed).get_state()
        self._target: Optional[np.ndarray] = None
        if storage not in ("auto", "tensor", "blosc2"):
            raise InputError(f"interaction storage must be auto, tensor or blosc2, not {storage!r}")
        with self._package():
            self._session = nnInteractiveInferenceSession(
                device=torch.device(device), use_torch_compile=False, verbose=False,
                torch_n_threads=self._threads, interactions_storage=storage)
            self._session.initialize_from_loaded_artifacts(_network(self._session, self.folder, checkpoint, trust))
        license_file = self.folder / "LICENSE"
        self.license_text = license_file.read_text(encoding="utf-8", errors="replace") \
            if license_file.is_file() else ""

    @property
    def license(self) -> str:
        """The model's licence identifier (first line of its LICENSE file; '!!MISSING!!' when unknown)."""
        return str(self._session.license)

    @property
    def scribble_width(self) -> int:
        """The scribble thickness in voxels the model prefers."""
        return int(max(self._session.preferred_scribble_thickness))

    @contextlib.contextmanager
    def _package(self) -> Iterator[None]:
        """Run package code quietly, with MedDL's thread count, this session's numpy stream and a fixed torch
        seed; the caller's random states are left as they were."""
        outer = np.random.get_state()
        np.random.set_state(self._numpy_state)
        try:
            with package_quietly("nninteractive", self._threads, self._seed):
                yield
        finally:
            self._numpy_state = np.random.get_state()
            np.random.set_state(outer)

    def set_image(self, image: Image) -> None:
        """The image to segment (one channel; its grid is kept: results are on it). Clears interactions."""
        check_scalar_volume(image, "interactive segmentation image")
        array = image.array
        if not np.any(array):
            raise InputError("the image is entirely zero: nnInteractive normalises over its nonzero region")
        self._image = image
        self._target = np.zeros(image.shape, dtype=np.uint8)
        with self._package():
            self._session.set_image(np.ascontiguousarray(array, dtype=np.float32)[None])
            self._session.set_target_buffer(self._target)
            self._session._finish_preprocessing_and_initialize_interactions()

    def _run(self, call: Any, *args: Any, **kwargs: Any) -> InteractionResult:
        start = time.perf_counter()
        with self._package():
            try:
                changed = call(*args, **kwargs)
            except ValueError as error:
                raise InputError(f"nnInteractive refused the prompt: {error}") from None
        return InteractionResult(self.labels(), time.perf_counter() - start, changed)

    def labels(self) -> Image:
        """The current label map (1 = object) on the image's grid."""
        return self._needs_image().with_array(self._target.copy())

    def add_point(self, position: Sequence[float], positive: bool = True, space: str = "RAS") -> InteractionResult:
        """A click at a physical position: inside the object (positive) or outside it."""
        voxel = prompts.point_voxel(self._needs_image(), position, space)
        return self._run(self._session.add_point_interaction, voxel, include_interaction=positive)

    def add_box(self, corner_a: Sequence[float], corner_b: Sequence[float], positive: bool = True,
                space: str = "RAS") -> InteractionResult:
        """A box given by two opposite physical corners (on one slice: a 2D box)."""
        box = prompts.box_voxels(self._needs_image(), corner_a, corner_b, space)
        return self._run(self._session.add_bbox_interaction, box, include_interaction=positive)

    def add_scribble(self, points: Sequence[Sequence[float]], positive: bool = True, space: str = "RAS",
                     width: Optional[int] = None) -> InteractionResult:
        """A scribble through physical points, `width` voxels thick (default the model's preference)."""
        mask, box = prompts.scribble_voxels(self._needs_image(), points, space, width or self.scribble_width)
        return self._run(self._session.add_scribble_interaction, mask, include_interaction=positive,
                         interaction_bbox=box)

    def add_lasso(self, points: Sequence[Sequence[float]], positive: bool = True,
                  space: str = "RAS") -> InteractionResult:
        """A closed polygon through physical points on one slice, filled."""
        mask, box = prompts.lasso_voxels(self._needs_image(), points, space)
        return self._run(self._session.add_lasso_interaction, mask, include_interaction=positive,
                         interaction_bbox=box)

    def seed_with(self, labels: Image | np.ndarray, run_prediction: bool = False) -> InteractionResult:
        """Start again from a label map (e.g. the previous result): clears the prompts; nonzero = object."""
        seed = seed_mask(self._needs_image(), labels)
        return self._run(self._session.add_initial_seg_interaction, seed, run_prediction=run_prediction)

    def undo(self) -> bool:
        """Revert the last interaction (one level); False when there is nothing to undo."""
        self._needs_image()
        with self._package():
            return bool(self._session.undo())

    def reset(self) -> None:
        """Forget all prompts and the label map (the image stays)."""
        self._needs_image()
        with self._package():
            self._session.reset_interactions()
