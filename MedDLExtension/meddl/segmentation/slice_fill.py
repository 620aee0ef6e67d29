"""Fill from drawn slices: a slice network trained on the few slices a user painted segments the slices between.

A slice counts as drawn along an axis when its painted voxels cover an area (2 x 2 blocks of voxels) that the
slices drawn along other axes do not explain (they cross it in lines, or bands where neighbouring slices were
drawn); so slices can be drawn along any axes, at any spacing, neighbours included.
On a drawn slice every voxel is known: painted voxels carry their label, the others are background. A 2D
U-Net trains on random patches of the drawn slices of every axis (nothing else reaches the loss), then
predicts every slice along each drawn axis; the class probabilities of the axes are averaged, weighted by
how many slices were drawn along each. The fill reaches one drawing interval beyond the first and last drawn
slice, and drawn slices keep exactly what was painted. A previous fill's network (its `state`) starts the next
round: after a few more painted slices it needs fewer steps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch

from ..device import select_compute
from ..errors import InputError, first_line
from ..image import Image, check_volume
from ..inference.preprocess import normalise
from ..painting import check_painting, drawn_slices, fill_region
from ..progress import Progress, no_progress
from .patches import pad_to

STATE_FORMAT = "meddl-slice-fill-1"


@dataclass
class FillSettings:
    steps: int = 400  # training steps of a first round
    warm_steps: int = 120  # training steps when starting from a previous round's network
    time_budget_s: Optional[float] = 45.0  # training stops at this many seconds even if steps remain
    batch_size: int = 8
    patch: int = 96  # in-plane patch size (voxels)
    channels: tuple[int, ...] = (16, 32, 64, 128)
    learning_rate: float = 3e-3
    warm_learning_rate: float = 1e-3  # fine-tuning a previous round's network: smaller steps keep what it learnt
    seed: int = 0
    device: str = "auto"


@dataclass
class FillResult:
    labels: Image  # uint8, on the input's grid
    state: dict[str, Any]  # the trained network, to start the next round
    drawn: dict[int, list[int]]  # array axis -> the slice indices counted as drawn
    steps: int
    warm_start: bool
    seconds: float
    history: list[float] = field(default_factory=list)  # training loss every 25 steps


def _network(classes: int, channels: tuple[int, ...]) -> torch.nn.Module:
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=1, out_channels=classes, channels=channels,
                strides=(2,) * (len(channels) - 1), num_res_units=1)


class _Slices:
    """Random patches of the drawn slices of every axis: (image, label) pairs of shape (1, patch, patch)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, drawn: dict[int, np.ndarray], patch: int, seed: int):
        self.items = [(x.select(axis, int(i)), y.select(axis, int(i))) for axis, ind in drawn.items() for i in ind]
        self.foreground = [torch.nonzero(label > 0) for _, label in self.items]
        self.patch, self.generator = patch, torch.Generator().manual_seed(seed)

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = zip(*(self._one(n) for n in range(size)))
        return torch.stack(images), torch.stack(labels)

    def _one(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        which = int(torch.randint(len(self.items), (1,), generator=self.generator))
        image, label = self.items[which]
        shape = torch.tensor(image.shape)
        centres = self.foreground[which]
        if n % 2 == 0 and len(centres):
            centre = centres[int(torch.randint(len(centres), (1,), generator=self.generator))]
        else:
            centre = (torch.rand(2, generator=self.generator) * shape).long()
        start = torch.clamp(torch.minimum(centre - self.patch // 2, shape - self.patch), min=0)
        box = tuple(slice(int(s), int(s) + self.patch) for s in start)
        size = (self.patch, self.patch)
        return pad_to(image[box], size)[None], pad_to(label[box], size)[None]


def _train(network, slices: _Slices, warm: bool, settings: FillSettings, device, report: Callable,
           history: list[float]) -> int:
    from monai.losses import DiceCELoss

    steps = settings.warm_steps if warm else settings.steps
    rate = settings.warm_learning_rate if warm else settings.learning_rate
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
    optimiser = torch.optim.AdamW(network.parameters(), lr=rate)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, rate, total_steps=steps)
    network.train()
    start = time.perf_counter()
    for step in range(steps):
        images, labels = slices.batch(settings.batch_size)
        optimiser.zero_grad()
        loss = loss_function(network(images.to(device)), labels.to(device).long())
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % 25 == 0:
            history.append(loss.item())
            report(0.05 + 0.75 * step / steps, f"training on the drawn slices: step {step + 1} of {steps}")
        if settings.time_budget_s is not None and time.perf_counter() - start > settings.time_budget_s:
            return step + 1
    return steps


@torch.no_grad()
def _probabilities(network, x: torch.Tensor, axes: dict[int, int], classes: int, device,
                   levels: int) -> torch.Tensor:
    """Class probabilities (C, *shape) averaged over the slice stacks along `axes` (axis -> weight); slices are
    padded to a multiple of 2 ** (levels - 1), what the U-Net's strides divide."""
    network.eval()
    total = torch.zeros((classes, *x.shape))
    multiple = 2 ** (levels - 1)
    for axis, weight in axes.items():
        stack = x.movedim(axis, 0)  # (slices, a, b)
        pad = [p for size in reversed(stack.shape[1:]) for p in (0, (-size) % multiple)]
        for first in range(0, stack.shape[0], 16):
            chunk = torch.nn.functional.pad(stack[first:first + 16], pad)[:, None].to(device)
            probabilities = torch.softmax(network(chunk), dim=1)[..., :stack.shape[1], :stack.shape[2]].cpu()
            total.movedim(axis + 1, 1)[:, first:first + 16] += weight * probabilities.movedim(0, 1)
    return total / sum(axes.values())


def fill_from_slices(image: Image, painted: Image, values: Optional[list[int]] = None,
                     state: Optional[dict[str, Any]] = None, settings: Optional[FillSettings] = None,
                     progress: Progress | None = None) -> FillResult:
    """Fill the slices between the drawn ones. `painted` holds label values 1..N on drawn slices, 0 elsewhere;
    `values` are the labels to fill (default: those painted); `state` is a previous round's (warm start)."""
    settings, report = settings or FillSettings(), progress or no_progress
    started = time.perf_counter()
    check_volume(image)
    if not image.same_grid(painted):
        raise InputError("the painted labels are not on the image's grid")
    labels = np.asarray(painted.array)
    values = sorted(values or set(np.unique(labels).tolist()) - {0})
    drawn = drawn_slices(labels)
    check_painting(labels, values, drawn)
    classes = max(values) + 1
    compute = select_compute(settings.device)
    torch.manual_seed(settings.seed)
    network = _network(classes, settings.channels).to(compute.device)
    warm = bool(state) and state.get("format") == STATE_FORMAT and state.get("classes") == classes \
        and tuple(state.get("channels", ())) == tuple(settings.channels)
    if warm:
        try:
            network.load_state_dict(state["weights"])
        except (RuntimeError, KeyError, TypeError) as error:
            raise InputError(f"the previous round's state does not fit this network: {first_line(error)}") from None
    x = normalise(torch.from_numpy(np.ascontiguousarray(image.array, dtype=np.float32)), {"method": "zscore"})
    y = torch.from_numpy(np.where(np.isin(labels, values), labels, 0).astype(np.int64))
    history: list[float] = []
    steps = _train(network, _Slices(x, y, drawn, settings.patch, settings.seed),
                   warm, settings, compute.device, report, history)
    report(0.8, "filling the slices between")
    weights = {axis: len(indices) for axis, indices in drawn.items() if len(indices) >= 2}
    region = fill_region(drawn, labels.shape)
    box = tuple(slice(int(found[0]), int(found[-1]) + 1) for found in (  # predict only there
        np.flatnonzero(region.any(axis=tuple(b for b in range(3) if b != axis))) for axis in range(3)))
    filled = np.zeros(labels.shape, np.uint8)
    filled[box] = _probabilities(network, x[box], weights, classes, compute.device,
                                  len(settings.channels)).argmax(0).numpy()
    filled[~region] = 0
    filled[~np.isin(filled, values)] = 0
    _keep_drawn(filled, labels, drawn)
    new_state = {"format": STATE_FORMAT, "classes": classes, "channels": list(settings.channels),
                 "weights": {name: tensor.cpu() for name, tensor in network.state_dict().items()}}
    report(1.0, "filled")
    return FillResult(image.with_array(filled), new_state, {a: i.tolist() for a, i in drawn.items()}, steps, warm,
                      time.perf_counter() - started, history)


def _keep_drawn(filled: np.ndarray, painted: np.ndarray, drawn: dict[int, np.ndarray]) -> None:
    """Drawn slices keep exactly what was painted (background included)."""
    for axis, indices in drawn.items():
        index = [slice(None)] * 3
        index[axis] = indices
        filled[tuple(index)] = painted[tuple(index)]
