"""Collaborative filtering of groups of similar blocks (the two stages of BM3D / BM4D, on torch).

Each reference block (4x4x4 voxels, every third voxel) is grouped with the most similar blocks
near it, similarity being measured on a guide image (a denoised estimate, so that noise does not
decide the matching). The group is transformed as a whole (a DCT within blocks and along the
group) and its coefficients are shrunk: hard-thresholded at a multiple of the noise level, or
Wiener-shrunk by P^2 / (P^2 + sigma^2) with P the pilot estimate's coefficient. Similar blocks
share the anatomy but not the noise, so the group concentrates the one and averages out the
other. Every voxel receives estimates from many groups; they are averaged with BM3D's weights
(the inverse of the noise left in the group). Slabs and chunks bound the memory.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..progress import Progress, no_progress

REFERENCES_PER_SLAB = 2**16  # blocks matched at once (their distances to every candidate shift are held)
GROUP_ELEMENTS_PER_CHUNK = 2**23  # groups x group size x block voxels filtered at once (~32 MiB per float tensor)


@dataclass(frozen=True)
class Grouping:
    """How blocks are grouped: block edge, reference stride, group size and the search window."""

    block: int = 4
    stride: int = 3
    group: int = 32
    reach: int = 3  # candidates are shifted by at most this many voxels along each axis
    offset_step: int = 1  # searched shifts are multiples of this (a wider window at the same cost)


def dct_matrix(size: int) -> torch.Tensor:
    """The orthonormal DCT-II matrix (rows are basis vectors)."""
    k = np.arange(size)
    matrix = np.cos(np.pi * (2 * k[None] + 1) * k[:, None] / (2 * size)) * np.sqrt(2.0 / size)
    matrix[0] /= np.sqrt(2.0)
    return torch.tensor(matrix, dtype=torch.float32)


def _search_offsets(grouping: Grouping) -> torch.Tensor:
    """Candidate shifts (O, 3), the zero shift first."""
    steps = range(-grouping.reach, grouping.reach + 1, grouping.offset_step)
    offsets = sorted({(a, b, c) for a in steps for b in steps for c in steps} - {(0, 0, 0)})
    return torch.tensor([(0, 0, 0)] + offsets)


def _reference_starts(length: int, block: int, stride: int) -> torch.Tensor:
    """Block starts every `stride` voxels along an axis, the last block flush with the end."""
    starts = list(range(0, length - block + 1, stride))
    if starts[-1] != length - block:
        starts.append(length - block)
    return torch.tensor(starts)


def _arithmetic_runs(starts: torch.Tensor, stride: int) -> list[tuple[int, int, int]]:
    """`starts` cut into runs of step `stride`: (first start, count, index of the first) for each run."""
    runs, values = [], starts.tolist()
    for index, start in enumerate(values):
        if runs and start - values[index - 1] == stride:
            first, count, position = runs[-1]
            runs[-1] = (first, count + 1, position)
        else:
            runs.append((start, 1, index))
    return runs


def _block_sums(values: torch.Tensor, blocks: tuple[int, ...], runs: list[list[tuple[int, int, int]]],
                stride: int) -> torch.Tensor:
    """Sums of `values` over the blocks at the product grid of starts given as runs of step `stride` per axis.

    Each run is one strided pooling; a grid's last start, flush with the end, is a run of its own.
    """
    sums = values.new_empty([sum(count for _, count, _ in axis_runs) for axis_runs in runs])
    for pieces in itertools.product(*runs):
        region, where = values, []
        for axis, ((first, count, position), block) in enumerate(zip(pieces, blocks)):
            region = region.narrow(axis, first, (count - 1) * stride + block)
            where.append(slice(position, position + count))
        sums[tuple(where)] = F.avg_pool3d(region[None, None], blocks, stride, divisor_override=1)[0, 0]
    return sums


def _best_matches(guide: torch.Tensor, blocks: tuple[int, ...], starts: list[torch.Tensor],
                  offsets: torch.Tensor, grouping: Grouping) -> torch.Tensor:
    """Start corners (R, K, 3) of each reference's K most similar blocks on the guide, itself first."""
    shape, reach = torch.tensor(guide.shape), grouping.reach
    grid = torch.stack(torch.meshgrid(*starts, indexing="ij"), -1).reshape(-1, 3)
    padded = F.pad(guide, [reach] * 6)  # a shifted guide is a view of it (what falls outside is masked below)
    runs = [_arithmetic_runs(axis_starts, grouping.stride) for axis_starts in starts]
    difference = torch.empty_like(guide)
    distances = torch.empty(len(grid), len(offsets))
    for index, offset in enumerate(offsets.tolist()):
        shifted = padded[tuple(slice(reach + o, reach + o + n) for o, n in zip(offset, guide.shape))]
        torch.sub(shifted, guide, out=difference).square_()
        distances[:, index] = _block_sums(difference, blocks, runs, grouping.stride).reshape(-1)
    candidates = grid[:, None, :] + offsets[None]
    inside = ((candidates >= 0) & (candidates <= shape - torch.tensor(blocks))).all(-1)
    distances[~inside] = float("inf")
    distances[:, 0] = -1.0
    best = torch.topk(distances, min(grouping.group, len(offsets)), dim=1, largest=False)
    chosen = torch.where(torch.isinf(best.values), 0, best.indices)  # too few candidates: repeat the reference
    return grid[:, None, :] + offsets[chosen]


def _shrink(coefficients: torch.Tensor, pilot: Optional[torch.Tensor], sigma: float,
            hard_threshold: float) -> torch.Tensor:
    """Per-coefficient gains: Wiener from the pilot's coefficients (overwritten), else hard thresholding
    (group mean kept)."""
    if pilot is not None:
        power = pilot.square_()
        return power.div_(power + sigma * sigma)
    gains = (coefficients.abs() > hard_threshold * sigma).to(coefficients.dtype)
    gains[:, 0, 0] = 1.0
    return gains


@dataclass(frozen=True)
class _GroupBasis:
    """What every group of a volume shares: flat-index strides, the block's voxel offsets, the DCTs."""

    strides: torch.Tensor  # (3,) flat-index step along k, j, i
    block_voxels: torch.Tensor  # (block voxels,) flat offsets of a block's voxels from its corner
    block_dct: torch.Tensor  # 3D DCT of a flattened block (Kronecker product of the per-axis DCTs)
    group_dct: torch.Tensor  # 1D DCT along the group


def _group_basis(shape: tuple[int, ...], blocks: tuple[int, ...], group_size: int) -> _GroupBasis:
    strides = torch.tensor([shape[1] * shape[2], shape[2], 1])
    within = torch.stack(torch.meshgrid(*[torch.arange(b) for b in blocks], indexing="ij"), -1).reshape(-1, 3)
    block_dct = torch.kron(torch.kron(dct_matrix(blocks[0]), dct_matrix(blocks[1])), dct_matrix(blocks[2]))
    return _GroupBasis(strides, within @ strides, block_dct, dct_matrix(group_size))


def _filter_groups(noisy: torch.Tensor, pilot: Optional[torch.Tensor], corner_indices: torch.Tensor,
                   basis: _GroupBasis, sigma: float,
                   hard_threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Filtered groups (the flat indices (R, K) of their block corners given): flat voxel indices,
    weighted estimates, and each group's weight."""
    voxels = corner_indices[:, :, None] + basis.block_voxels[None, None]  # (R, K, block voxels)

    def transform(values: torch.Tensor) -> torch.Tensor:
        return basis.group_dct @ (values @ basis.block_dct.T)

    coefficients = transform(noisy.reshape(-1)[voxels])
    gains = _shrink(coefficients, transform(pilot.reshape(-1)[voxels]) if pilot is not None else None, sigma,
                    hard_threshold)
    weights = 1.0 / gains.square().sum(dim=(1, 2)).clamp(min=1e-3)
    coefficients.mul_(gains).mul_(weights[:, None, None])  # the transform is linear: weigh before inverting
    estimates = basis.group_dct.T @ coefficients @ basis.block_dct
    return voxels.reshape(-1), estimates.reshape(-1), weights


def _covering_sums(corner_weights: torch.Tensor, blocks: tuple[int, ...]) -> torch.Tensor:
    """For each voxel, the sum of the weights given at the corners of the blocks that contain it."""
    before = [side for block in reversed(blocks) for side in (block - 1, 0)]  # corners up to block - 1 voxels back
    padded = F.pad(corner_weights[None, None], before)
    return F.avg_pool3d(padded, blocks, 1, divisor_override=1)[0, 0]


def collaborative_filter(noisy: np.ndarray, guide: np.ndarray, sigma: float, pilot: Optional[np.ndarray] = None,
                         hard_threshold: float = 2.7, grouping: Grouping = Grouping(),
                         progress: Progress = no_progress) -> np.ndarray:
    """`noisy` filtered in groups matched on `guide`: Wiener-shrunk by `pilot` if given, else hard-thresholded.

    Matching runs on slabs of reference rows (with the search margin around them), filtering on
    chunks of a slab's groups: both bound the memory whatever the volume's size.
    """
    observed, matched = torch.from_numpy(noisy.astype(np.float32)), torch.from_numpy(guide.astype(np.float32))
    prior = torch.from_numpy(pilot.astype(np.float32)) if pilot is not None else None
    blocks = tuple(min(grouping.block, n) for n in noisy.shape)
    starts = [_reference_starts(n, b, grouping.stride) for n, b in zip(noisy.shape, blocks)]
    references_per_row = len(starts[1]) * len(starts[2])
    rows_per_slab = max(1, REFERENCES_PER_SLAB // references_per_row)
    groups_per_chunk = max(1, GROUP_ELEMENTS_PER_CHUNK // (grouping.group * int(np.prod(blocks))))
    offsets = _search_offsets(grouping)
    basis = _group_basis(noisy.shape, blocks, min(grouping.group, len(offsets)))
    total, corner_weights = torch.zeros(observed.numel()), torch.zeros(observed.numel())
    for first in range(0, len(starts[0]), rows_per_slab):
        progress(first / len(starts[0]), "filtering groups of similar blocks")
        rows = starts[0][first:first + rows_per_slab]
        low = max(0, int(rows[0]) - grouping.reach)
        part = slice(low, min(noisy.shape[0], int(rows[-1]) + blocks[0] + grouping.reach))
        corners = _best_matches(matched[part], blocks, [rows - low, starts[1], starts[2]], offsets, grouping)
        for chunk in ((corners + torch.tensor([low, 0, 0])) @ basis.strides).split(groups_per_chunk):
            voxels, estimates, group_weights = _filter_groups(observed, prior, chunk, basis, sigma, hard_threshold)
            total.index_add_(0, voxels, estimates)
            corner_weights.index_add_(0, chunk.reshape(-1), group_weights[:, None].expand_as(chunk).reshape(-1))
    weights = _covering_sums(corner_weights.reshape(noisy.shape), blocks)
    return (total.reshape(noisy.shape) / weights).numpy()
