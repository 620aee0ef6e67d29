"""Running an nnU-Net v2 model the way nnU-Net's own predictor does, on MedDL's images and devices.

nnU-Net's preprocessing (transpose, crop to non-zero, per-channel normalisation, resampling to the plans'
spacing), its Gaussian-weighted sliding window with mirroring on the axes the checkpoint allows, the fold
ensemble (logits averaged), its export (resampling back, region assembly, uncropping), a cascade's
previous-stage labels as extra channels and the postprocessing are nnunetv2's own functions, called in the
order `nnUNetPredictor` and `nnUNetv2_apply_postprocessing` call them; MedDL adds the geometry (the label map
is on the input's exact grid), progress per fold and its error handling.
"""

from __future__ import annotations

import contextlib
import io
from typing import Callable

import numpy as np
import torch

from ..device import Compute
from ..errors import InputError
from ..image import Image, check_volume
from ..models.loaded import network_failures
from ..models.loading import LoadedModel
from ..models.nnunet import NnunetParts
from ..orientation import Reorientation
from ..progress import Progress, no_progress

REORIENTING_READERS = ("NibabelIOWithReorient",)


class _Stage:
    """One nnU-Net results folder run as nnUNetPredictor runs it: preprocessing (with a cascade's previous-stage
    labels as one-hot channels), the sliding window per fold, the fold average and the export to the input's
    array grid."""

    def __init__(self, parts: NnunetParts, compute: Compute, mirroring: bool) -> None:
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        self.parts = parts
        self.network = parts.network.to(compute.device).eval()
        with contextlib.redirect_stdout(io.StringIO()):  # it prints a note on every non-CUDA device
            self.predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring,
                                             perform_everything_on_device=compute.device.type == "cuda",
                                             device=compute.device, allow_tqdm=False)
        self.predictor.manual_initialization(self.network, parts.plans_manager, parts.configuration_manager,
                                             parts.parameters, parts.dataset_json, parts.trainer_name,
                                             parts.mirroring_axes)

    def _preprocessed(self, data: np.ndarray, spacing: list[float], previous: np.ndarray | None):
        from nnunetv2.utilities.label_handling.label_handling import convert_labelmap_to_one_hot

        parts = self.parts
        preprocessor = parts.configuration_manager.preprocessor_class(verbose=False)
        # nnU-Net reads a previous stage's labels back from its file as float32 (SimpleITKIO.read_seg)
        seg = None if previous is None else previous[None].astype(np.float32)
        data, seg, properties = preprocessor.run_case_npy(data, seg, {"spacing": list(spacing)}, parts.plans_manager,
                                                          parts.configuration_manager, parts.dataset_json)
        if previous is not None:
            data = np.vstack((data, convert_labelmap_to_one_hot(seg[0], self.predictor.label_manager.foreground_labels,
                                                                data.dtype)))
        return torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)), properties

    def labels(self, data: np.ndarray, spacing: list[float], previous: np.ndarray | None,
               report: Callable[[float, str], None]) -> np.ndarray:
        """Labels (k, j, i) on the grid of `data` (C, k, j, i); `report(fraction, message)` per fold."""
        from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

        parts = self.parts
        report(0.0, f"preprocessing (nnU-Net {parts.configuration})")
        tensor, properties = self._preprocessed(data, spacing, previous)
        logits = None
        count = len(parts.parameters)
        for index, parameters in enumerate(parts.parameters):
            report(0.1 + 0.85 * index / count, f"{parts.configuration}: fold {index + 1} of {count}")
            self.network.load_state_dict(parameters)
            fold_logits = self.predictor.predict_sliding_window_return_logits(tensor).to("cpu")
            logits = fold_logits if logits is None else logits + fold_logits
        if count > 1:
            logits /= count
        report(0.95, "resampling back")
        return np.asarray(convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, parts.plans_manager, parts.configuration_manager, self.predictor.label_manager, properties))


class NnunetSegmenter:
    """Segments with the folds of an nnU-Net results folder (after its low-resolution stage for a cascade, with
    its postprocessing where it has one); `mirroring` is nnU-Net's test-time augmentation."""

    def __init__(self, model: LoadedModel, compute: Compute, mirroring: bool = True) -> None:
        self.card = model.card
        self.parts = model.pipeline["parts"]
        self.stages = [_Stage(parts, compute, mirroring) for parts in (self.parts.previous, self.parts) if parts]

    def _channels_first(self, image: Image) -> tuple[np.ndarray, Reorientation | None]:
        """(C, k, j, i) in the image's own dtype, as nnU-Net's SimpleITK reader orders it; or in closest-canonical
        (RAS) voxel order for models planned with nnU-Net's reorienting reader or whose card asks for it (as
        their publisher feeds them)."""
        array = image.array if image.array.ndim == 4 else image.array[..., None]
        reader = self.parts.plans_manager.plans.get("image_reader_writer", "SimpleITKIO")
        if reader in REORIENTING_READERS or self.card.orientation == "RAS":
            reorientation = Reorientation.of(image)
            channels = [reorientation.to_canonical(array[..., c]).transpose(2, 1, 0) for c in range(array.shape[-1])]
            return np.stack(channels), reorientation
        return np.moveaxis(array, -1, 0), None  # a view: nnU-Net's preprocessing makes the one float32 copy

    def __call__(self, image: Image, progress: Progress | None = None) -> Image:
        """A uint8 label map on exactly the input grid (values as in dataset.json)."""
        report = progress or no_progress
        check_volume(image, channels=self.card.channels)
        if not np.isfinite(image.array).all():
            raise InputError("the input image has NaN or infinite voxels; nnU-Net models need finite values")
        data, reorientation = self._channels_first(image)
        spacing = list(image.spacing)[::-1] if reorientation is None else \
            [image.spacing[reorientation.world_axis.index(axis)] for axis in range(3)][::-1]
        labels = None
        share = 0.95 / len(self.stages)
        with network_failures(self.card.name):
            for index, stage in enumerate(self.stages):
                start = 0.02 + share * index
                labels = stage.labels(data, spacing, labels,
                                      lambda fraction, message, start=start: report(start + share * fraction, message))
        if self.parts.postprocessing is not None:
            report(0.97, "postprocessing (nnU-Net)")
            labels = self.parts.postprocessing(labels)
        if reorientation is not None:
            labels = reorientation.from_canonical(labels.transpose(2, 1, 0))
        report(1.0, "done")
        return image.with_array(np.ascontiguousarray(labels.astype(np.uint8)))
