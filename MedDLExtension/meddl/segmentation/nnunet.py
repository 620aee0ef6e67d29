"""Running an nnU-Net v2 model the way nnU-Net's own predictor does, on MedDL's images and devices.

nnU-Net's preprocessing (transpose, crop to non-zero, per-channel normalisation, resampling to the plans'
spacing), its Gaussian-weighted sliding window with mirroring on the axes the checkpoint allows, the fold
ensemble (logits averaged) and its export (resampling back, region assembly, uncropping) are nnunetv2's
own functions, called in the order `nnUNetPredictor.predict_single_npy_array` calls them; MedDL adds the
geometry (the label map is on the input's exact grid), progress per fold and its error handling.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import torch

from ..device import Compute
from ..errors import InputError
from ..image import Image, check_volume
from ..models.loaded import network_failures
from ..models.loading import LoadedModel
from ..orientation import Reorientation
from ..progress import Progress, no_progress

REORIENTING_READERS = ("NibabelIOWithReorient",)


class NnunetSegmenter:
    """Segments with the folds of an nnU-Net results folder; `mirroring` is nnU-Net's test-time augmentation."""

    def __init__(self, model: LoadedModel, compute: Compute, mirroring: bool = True) -> None:
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        self.card = model.card
        self.parts = model.pipeline["parts"]
        self.network = model.networks["network"].to(compute.device).eval()
        with contextlib.redirect_stdout(io.StringIO()):  # it prints a note on every non-CUDA device
            self.predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring,
                                             perform_everything_on_device=compute.device.type == "cuda",
                                             device=compute.device, allow_tqdm=False)
        parts = self.parts
        self.predictor.manual_initialization(self.network, parts.plans_manager, parts.configuration_manager,
                                             parts.parameters, parts.dataset_json, parts.trainer_name,
                                             parts.mirroring_axes)

    def _channels_first(self, image: Image) -> tuple[np.ndarray, Reorientation | None]:
        """(C, k, j, i) as nnU-Net's SimpleITK reader gives it, or the closest-canonical (RAS) voxel order for
        models planned with nnU-Net's reorienting reader or whose card asks for it (as their publisher feeds
        them)."""
        array = image.array if image.array.ndim == 4 else image.array[..., None]
        reader = self.parts.plans_manager.plans.get("image_reader_writer", "SimpleITKIO")
        if reader in REORIENTING_READERS or self.card.orientation == "RAS":
            reorientation = Reorientation.of(image)
            channels = [reorientation.to_canonical(array[..., c]).transpose(2, 1, 0) for c in range(array.shape[-1])]
            return np.stack(channels).astype(np.float32), reorientation
        return np.ascontiguousarray(np.moveaxis(array, -1, 0), dtype=np.float32), None

    def __call__(self, image: Image, progress: Progress | None = None) -> Image:
        """A uint8 label map on exactly the input grid (values as in dataset.json)."""
        from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

        report = progress or no_progress
        check_volume(image, channels=self.card.channels)
        if not np.isfinite(image.array).all():
            raise InputError("the input image has NaN or infinite voxels; nnU-Net models need finite values")
        data, reorientation = self._channels_first(image)
        spacing = list(image.spacing)[::-1] if reorientation is None else \
            [image.spacing[reorientation.world_axis.index(axis)] for axis in range(3)][::-1]
        parts = self.parts
        report(0.02, "preprocessing (nnU-Net)")
        preprocessor = parts.configuration_manager.preprocessor_class(verbose=False)
        data, _, properties = preprocessor.run_case_npy(data, None, {"spacing": spacing}, parts.plans_manager,
                                                        parts.configuration_manager, parts.dataset_json)
        tensor = torch.from_numpy(data)
        logits = None
        count = len(parts.parameters)
        with network_failures(self.card.name):
            for index, parameters in enumerate(parts.parameters):
                report(0.1 + 0.8 * index / count, f"fold {index + 1} of {count}")
                self.network.load_state_dict(parameters)
                fold_logits = self.predictor.predict_sliding_window_return_logits(tensor).to("cpu")
                logits = fold_logits if logits is None else logits + fold_logits
        if count > 1:
            logits /= count
        report(0.92, "resampling back")
        labels = convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, parts.plans_manager, parts.configuration_manager, self.predictor.label_manager, properties)
        labels = np.asarray(labels)
        if reorientation is not None:
            labels = reorientation.from_canonical(labels.transpose(2, 1, 0))
        report(1.0, "done")
        return image.with_array(np.ascontiguousarray(labels.astype(np.uint8)))
