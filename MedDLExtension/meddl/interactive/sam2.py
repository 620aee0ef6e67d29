"""A promptable SAM 2 (or MedSAM2) session: boxes and points on one slice of a volume, propagated through the
volume slice by slice in both directions by the `sam2` package's video predictor.

The predictor's video frames are the volume's slices across one voxel axis (k, j or i): the axis along which the
prompts are flat (a box drawn on a slice is one voxel thick across it; a lone point takes the session's axis, else
k). A session's prompts and seed share that axis. Frames are made when the predictor asks for one: intensities
windowed to the image's 0.5-99.5 percentiles, resized to the model's square input, three channels, normalised
with ImageNet's mean and deviation as sam2's own frame loader does (so neither JPEG folders nor torchvision).

Each prompt reaches the package as its interactive demo sends it (`add_new_points_or_box` on the prompt's slice:
points accumulate on a slice, a box comes first with the slice's earlier points) and is followed by a propagation
forward and backward (`propagate_in_video`); the label map is mask logits > 0 at each slice's size. As in the
package, the result after several prompts depends on their order; `undo` restores the predictor's state from
before the last prompt (or replays the prompts left), so it always equals a fresh replay.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError, ModelError
from ..image import Image, check_scalar_volume
from . import prompts, sam2_model
from .sam2_model import is_sam2_model
from .session import InteractionResult, PromptSession, package_quietly, seed_mask

__all__ = ["Sam2Session", "is_sam2_model", "window"]
log = logging.getLogger(__name__)
AXES = "kji"
UNDO_LEVELS = 4  # predictor states kept for undo; older prompts are undone by a replay
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # sam2's frame normalisation
OBJECT = 1  # the one object id a session tracks
_PER_FRAME = ("point_inputs_per_obj", "mask_inputs_per_obj", "frames_tracked_per_obj")
_OUTPUTS = ("output_dict_per_obj", "temp_output_dict_per_obj")


@dataclass(frozen=True)
class _SlicePrompt:
    """A prompt as the predictor takes it: its frame and pixel (column x, row y) positions on the frame."""

    frame: int
    kind: str  # "point" or "box"
    xy: tuple[int, ...]  # (x, y), or a box's (x0, y0, x1, y1) with both corners inside it
    label: int  # 1 positive, 0 negative


def window(array: np.ndarray) -> np.ndarray:
    """Intensities mapped to [0, 1] between the image's 0.5 and 99.5 percentiles (a flat image is all 0)."""
    low, high = np.percentile(array, [0.5, 99.5])
    if not high > low:
        return np.zeros(array.shape, np.float32)
    return np.clip((array.astype(np.float32) - np.float32(low)) / np.float32(high - low), 0, 1)


class _Frames:
    """A windowed volume's slices across one axis as the predictor's frames, (3, size, size) each, made when
    asked for (a whole volume at the model's size would not fit in memory)."""

    def __init__(self, windowed: np.ndarray, axis: int, size: int, device: torch.device) -> None:
        self.slices, self.size, self.device = np.moveaxis(windowed, axis, 0), size, device
        self.mean, self.std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)

    def __len__(self) -> int:
        return self.slices.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        frame = torch.from_numpy(np.ascontiguousarray(self.slices[index]))[None, None]
        frame = F.interpolate(frame, size=(self.size, self.size), mode="bilinear", align_corners=False,
                              antialias=True)[0]
        return ((frame.expand(3, -1, -1) - self.mean) / self.std).to(self.device)


def _inference_state(predictor: Any, frames: _Frames) -> dict:
    """`SAM2VideoPredictor.init_state`'s state (sam2 1.1) on in-memory frames instead of a JPEG folder or an MP4
    file (its only loaders), without its warm-up of frame 0's features (a cache)."""
    height, width = frames.slices.shape[1:]
    device = predictor.device
    return {"images": frames, "num_frames": len(frames), "offload_video_to_cpu": False,
            "offload_state_to_cpu": False, "video_height": height, "video_width": width, "device": device,
            "storage_device": device, "point_inputs_per_obj": {}, "mask_inputs_per_obj": {}, "cached_features": {},
            "constants": {}, "obj_id_to_idx": OrderedDict(), "obj_idx_to_id": OrderedDict(), "obj_ids": [],
            "output_dict_per_obj": {}, "temp_output_dict_per_obj": {}, "frames_tracked_per_obj": {}}


def _snapshot(state: dict) -> dict:
    """The state's prompt and output bookkeeping, copied down to its per-frame entries. The entries (tensors,
    per-frame outputs) are shared: the predictor replaces them, it never changes one it has stored."""
    copied: dict[str, Any] = {key: {obj: dict(frames) for obj, frames in state[key].items()} for key in _PER_FRAME}
    for key in _OUTPUTS:
        copied[key] = {obj: {kind: dict(frames) for kind, frames in outputs.items()}
                       for obj, outputs in state[key].items()}
    copied.update(obj_id_to_idx=OrderedDict(state["obj_id_to_idx"]), obj_idx_to_id=OrderedDict(state["obj_idx_to_id"]),
                  obj_ids=list(state["obj_ids"]))
    return copied


def _on_slice(axis: int, kji: Sequence[int]) -> tuple[int, int, int]:
    """(frame, x, y) of voxel (k, j, i) on the slices across `axis`: rows and columns are the other two axes."""
    rows, columns = (a for a in range(3) if a != axis)
    return int(kji[axis]), int(kji[columns]), int(kji[rows])


def _flat_axis(extent: Sequence[Sequence[int]], preferred: Optional[int]) -> Optional[int]:
    """The axis along which a voxel box ([[k0, k1], [j0, j1], [i0, i1]]) is one voxel thick: `preferred` if it
    is one of them, else the first; None when it is thicker along all three."""
    flat = [axis for axis in range(3) if extent[axis][1] - extent[axis][0] == 1]
    return preferred if preferred in flat else (flat[0] if flat else None)


def _require_package() -> None:
    try:
        import sam2.sam2_video_predictor  # noqa: F401
    except ImportError as error:
        raise ModelError(f"this is a SAM 2 model: MedDL runs it with the sam2 package (and hydra-core, iopath), "
                         f"which is not installed or not importable ({error})") from None


class Sam2Session(PromptSession):
    """SAM 2 / MedSAM2: points and boxes placed in physical space on one slice, propagated through the volume."""

    family = "SAM 2"
    kinds = ("point", "box")

    def __init__(self, path: str | Path, trust: bool = False, device: str = "cpu", seed: int = 0) -> None:
        """Open a SAM 2 model (see `sam2_model` for the layouts); nothing in it runs code unless `trust`. `seed`
        fixes torch's random stream while the package runs."""
        _require_package()
        files = sam2_model.model_files(path)
        if files is None:
            state = "does not exist" if not Path(path).exists() else "is not one"
            raise ModelError(f"{path} {state}: a SAM 2 model is a folder with config.yaml and checkpoint.pt, or a "
                             "checkpoint NAME.pt with its configuration NAME.yaml beside it")
        checkpoint, config_file = files
        config = sam2_model.compose(config_file)
        sam2_model.check_code(config, trust, config_file)
        weights = sam2_model.load_weights(checkpoint, trust)
        self.path, self._seed, self._threads = Path(path), seed, torch.get_num_threads()
        with self._package():
            self._predictor = sam2_model.build_predictor(config, weights, device, checkpoint)
        self.license, self.license_text = sam2_model.read_license(checkpoint)

    @property
    def image_size(self) -> int:
        """The model's square input size in pixels (frames are resized to it)."""
        return int(self._predictor.image_size)

    @contextlib.contextmanager
    def _package(self) -> Iterator[None]:
        """Run package code with MedDL's thread count and a fixed torch seed, its progress bars and prints in the
        log; the caller's random state is left as it was."""
        with package_quietly("sam2", self._threads, self._seed, stderr=True):
            yield

    def set_image(self, image: Image) -> None:
        """The image to segment (one channel; its grid is kept: results are on it). Clears the prompts."""
        check_scalar_volume(image, "interactive segmentation image")
        self._image, self._windowed = image, window(image.array)
        self.reset()

    def reset(self) -> None:
        """Forget all prompts, the seed and the label map (the image stays)."""
        image = self._needs_image()
        self._axis: Optional[int] = None
        self._state: Optional[dict] = None
        self._seed_mask: Optional[np.ndarray] = None
        self._history: list[_SlicePrompt] = []
        self._undo: list[tuple[dict, np.ndarray]] = []
        self._labels = np.zeros(image.shape, np.uint8)

    def labels(self) -> Image:
        """The current label map (1 = object) on the image's grid."""
        return self._needs_image().with_array(self._labels.copy())

    def _use_axis(self, axis: int, what: str) -> None:
        """Frames across `axis` (the predictor's state is made for the first prompt or seed); InputError when the
        session's prompts lie across another axis."""
        if self._axis is not None and axis != self._axis:
            raise InputError(f"SAM 2 propagates across one axis per session: its prompts lie on slices across "
                             f"{AXES[self._axis]}, this {what} across {AXES[axis]} (reset to change the axis)")
        if self._state is None:
            frames = _Frames(self._windowed, axis, self.image_size, self._predictor.device)
            self._axis, self._state = axis, _inference_state(self._predictor, frames)

    def add_point(self, position: Sequence[float], positive: bool = True, space: str = "RAS") -> InteractionResult:
        """A click at a physical position, inside the object (positive) or outside it, on the session's slice
        axis (k for the first prompt)."""
        voxel = prompts.point_voxel(self._needs_image(), position, space)
        axis = 0 if self._axis is None else self._axis
        frame, x, y = _on_slice(axis, voxel)
        return self._interact(axis, _SlicePrompt(frame, "point", (x, y), int(positive)))

    def add_box(self, corner_a: Sequence[float], corner_b: Sequence[float], positive: bool = True,
                space: str = "RAS") -> InteractionResult:
        """A box drawn on one slice, given by two opposite physical corners (the object lies inside)."""
        extent = prompts.box_voxels(self._needs_image(), corner_a, corner_b, space)
        if not positive:
            raise InputError("SAM 2 boxes are positive (the object lies inside): remove with negative points")
        axis = _flat_axis(extent, self._axis)
        if axis is None:
            raise InputError(f"a SAM 2 box is drawn on one slice, but its corners lie on different slices across "
                             f"every axis (voxel box {extent})")
        frame, x0, y0 = _on_slice(axis, [low for low, _ in extent])
        _, x1, y1 = _on_slice(axis, [high - 1 for _, high in extent])
        return self._interact(axis, _SlicePrompt(frame, "box", (x0, y0, x1, y1), 1))

    def _interact(self, axis: int, prompt: _SlicePrompt) -> InteractionResult:
        start = time.perf_counter()
        self._use_axis(axis, prompt.kind)
        before = (_snapshot(self._state), self._labels)
        with self._package():
            self._send(prompt, self._history)
            self._propagate()
        self._history.append(prompt)
        self._undo = (self._undo + [before])[-UNDO_LEVELS:]
        seconds = time.perf_counter() - start
        log.debug("SAM 2 %s on slice %s=%d: %.2f s", prompt.kind, AXES[axis], prompt.frame, seconds)
        return InteractionResult(self.labels(), seconds)

    def _send(self, prompt: _SlicePrompt, earlier: Sequence[_SlicePrompt]) -> None:
        """One prompt to the predictor: a point joins its slice's points; a box goes first, with the slice's
        earlier points (the package takes a box only as the first of a slice's prompts)."""
        if prompt.kind == "point":
            self._predictor.add_new_points_or_box(self._state, prompt.frame, OBJECT, points=[list(prompt.xy)],
                                                  labels=[prompt.label], clear_old_points=False)
            return
        points = [p for p in earlier if p.frame == prompt.frame and p.kind == "point"]
        self._predictor.add_new_points_or_box(self._state, prompt.frame, OBJECT, box=list(prompt.xy),
                                              points=[list(p.xy) for p in points] or None,
                                              labels=[p.label for p in points] or None, clear_old_points=True)

    def _propagate(self) -> None:
        """Track through every slice, forward then backward from the first prompted one: the label map."""
        labels = np.zeros(self._labels.shape, np.uint8)
        slices = np.moveaxis(labels, self._axis, 0)
        for reverse in (False, True):
            for frame, _, masks in self._predictor.propagate_in_video(self._state, reverse=reverse):
                slices[frame] = (masks[0, 0] > 0).cpu().numpy()
        self._labels = labels

    def seed_with(self, labels: Image | np.ndarray, axis: Optional[int] = None) -> InteractionResult:
        """Start again from a label map (nonzero = object): clears the prompts, gives the predictor the map as a
        mask on every slice across `axis` that holds object voxels, and propagates to the other slices. `axis`
        (0, 1, 2 for k, j, i) defaults to the one the map is a single slice across, else k; prompts that follow
        must lie across the same axis."""
        mask = seed_mask(self._needs_image(), labels).astype(bool)
        if axis is not None and axis not in (0, 1, 2):
            raise InputError(f"a seed's slice axis is 0, 1 or 2 (k, j, i), not {axis!r}")
        start = time.perf_counter()
        self.reset()
        if mask.any():
            if axis is None:
                nonzero = np.argwhere(mask)
                axis = _flat_axis(np.c_[nonzero.min(axis=0), nonzero.max(axis=0) + 1], 0) or 0
            self._use_axis(axis, "seed")
            self._seed_mask = mask
            with self._package():
                self._send_seed()
                self._propagate()
        return InteractionResult(self.labels(), time.perf_counter() - start)

    def _send_seed(self) -> None:
        slices = np.moveaxis(self._seed_mask, self._axis, 0)
        for frame in np.flatnonzero(slices.any(axis=(1, 2))):
            self._predictor.add_new_mask(self._state, int(frame), OBJECT, torch.from_numpy(slices[frame].copy()))

    def undo(self) -> bool:
        """Revert the last prompt (the seed stays); False when there is none."""
        self._needs_image()
        if not self._history:
            return False
        self._history.pop()
        if self._undo:
            state, self._labels = self._undo.pop()
            self._state.update(state)
        else:
            with self._package():
                self._replay()
        if not self._history and self._seed_mask is None:
            self._axis, self._state = None, None
        return True

    def _replay(self) -> None:
        """The seed and the prompts again from a clean predictor state, each followed by its propagation."""
        self._predictor.reset_state(self._state)
        self._labels = np.zeros(self._labels.shape, np.uint8)
        if self._seed_mask is not None:
            self._send_seed()
            self._propagate()
        for number, prompt in enumerate(self._history):
            self._send(prompt, self._history[:number])
            self._propagate()
