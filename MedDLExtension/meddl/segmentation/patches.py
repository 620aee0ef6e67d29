"""Training patches drawn from whole volumes: dense 3D patches, or single slices for sparse (few-shot) labels.

Item n of epoch e is a pure function of (seed, e, n), so a DistributedSampler can split one epoch's
items between processes and every process sees the same data it would see alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np
import torch

SPARSE_SHARE = 0.5  # labels on fewer than half of the slices they span mean "a few slices were drawn"


def labelled_slices(label: np.ndarray, axis: int) -> np.ndarray:
    """Indices of the slices along `axis` that hold at least one labelled voxel."""
    other = tuple(a for a in range(label.ndim) if a != axis)
    return np.flatnonzero(np.any(label > 0, axis=other))


def sparse_axis(label: np.ndarray) -> Optional[int]:
    """The axis along which only a few slices were labelled, or None when the labels are dense.

    A slice counts as labelled when it holds at least one label voxel; an axis is sparse when fewer
    than half of the slices between the first and last labelled one are labelled.
    """
    best, best_share = None, SPARSE_SHARE
    for axis in range(label.ndim):
        found = labelled_slices(label, axis)
        if len(found) == 0:
            continue
        share = len(found) / (found[-1] - found[0] + 1)
        if share < best_share:
            best, best_share = axis, share
    return best


class PatchDataset(torch.utils.data.Dataset):
    """Random patches of normalised (image, label) tensors in (i, j, k) order; half centred on a label.

    With `slice_axis` set, patches are one slice thick and come only from labelled slices along that
    axis: unlabelled slices never reach the loss.
    """

    def __init__(self, volumes: Sequence[tuple[torch.Tensor, torch.Tensor]], patch: tuple[int, int, int],
                 length: int, seed: int = 0, slice_axis: Optional[int] = None) -> None:
        self.volumes, self.patch, self.length, self.seed = list(volumes), tuple(patch), length, seed
        self.slice_axis, self.epoch = slice_axis, 0
        self.foreground = [torch.nonzero(y > 0) for _, y in self.volumes]
        self.slices = [torch.from_numpy(labelled_slices(y.numpy(), slice_axis)) if slice_axis is not None else None
                       for _, y in self.volumes]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(hash((self.seed, self.epoch, index)) % 2**63)
        which = int(torch.randint(len(self.volumes), (1,), generator=generator))
        x, y = self.volumes[which]
        size = torch.tensor(x.shape)
        if index % 2 == 0 and len(self.foreground[which]):
            candidates = self.foreground[which]
            if self.slice_axis is not None:
                allowed = torch.isin(candidates[:, self.slice_axis], self.slices[which])
                candidates = candidates[allowed]
            centre = candidates[int(torch.randint(len(candidates), (1,), generator=generator))]
        else:
            centre = (torch.rand(3, generator=generator) * size).long()
            if self.slice_axis is not None:
                slices = self.slices[which]
                centre[self.slice_axis] = slices[int(torch.randint(len(slices), (1,), generator=generator))]
        half = torch.tensor(self.patch) // 2
        start = torch.minimum(torch.clamp(centre - half, min=0), torch.clamp(size - torch.tensor(self.patch), min=0))
        box = tuple(slice(int(s), int(s) + p) for s, p in zip(start, self.patch))
        return pad_to(x[box], self.patch)[None], pad_to(y[box], self.patch)[None]


def pad_to(t: torch.Tensor, patch: tuple[int, ...]) -> torch.Tensor:
    """`t` zero-padded at the end of each axis to the shape `patch` (a patch cut at the volume's edge)."""
    pads = [p for size, target in zip(reversed(t.shape), reversed(patch)) for p in (0, target - size)]
    return torch.nn.functional.pad(t, pads)
