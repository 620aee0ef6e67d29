"""Data-parallel training under `torchrun`: the same `meddl train` command on one process or many.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them training runs in one process and
nothing here costs anything. CUDA processes use NCCL (one GPU each), CPU processes use gloo.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    started_here: bool = False
    collective_device: str = "cpu"  # NCCL exchanges CUDA tensors only

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 validates, reports progress and writes the bundle."""
        return self.rank == 0

    def device(self, chosen: torch.device) -> torch.device:
        """One GPU per process: the local rank's."""
        if self.enabled and chosen.type == "cuda":
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return chosen

    def wrap(self, network: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        if not self.enabled:
            return network
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(network, device_ids=[device.index] if device.type == "cuda" else None)

    def sampler(self, dataset: torch.utils.data.Dataset, seed: int):
        """Splits each epoch's items between the processes (None when alone)."""
        if not self.enabled:
            return None
        from torch.utils.data.distributed import DistributedSampler

        return DistributedSampler(dataset, self.world_size, self.rank, shuffle=True, seed=seed, drop_last=True)

    def agree(self, flag: bool) -> bool:
        """Rank 0's decision (e.g. "the time budget is spent"), the same on every process."""
        if not self.enabled:
            return flag
        decision = torch.tensor([1 if flag else 0], device=self.collective_device)
        dist.broadcast(decision, src=0)
        return bool(decision.item())

    def mean(self, value: float) -> float:
        """The mean of a number over all processes (the training loss of one step)."""
        if not self.enabled:
            return value
        total = torch.tensor([value], dtype=torch.float64, device=self.collective_device)
        dist.all_reduce(total)
        return float(total.item()) / self.world_size

    def close(self) -> None:
        if self.enabled:
            dist.barrier()
            if self.started_here:
                dist.destroy_process_group()


def distributed_context(device_type: str) -> DistributedContext:
    """Join the process group torchrun describes in the environment, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    started_here = not dist.is_initialized()
    if started_here:
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    collective = f"cuda:{local_rank}" if dist.get_backend() == "nccl" else "cpu"
    return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank, started_here, collective)
