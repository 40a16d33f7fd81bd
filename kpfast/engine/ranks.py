"""Where this process stands in a distributed job, and the few collective steps the fit loop takes.

Without ``torch.distributed`` initialised every call is a no-op for rank 0 of 1, so single-process
runs pay nothing. A data-parallel run (``torchrun``) initialises the process group, wraps the model
in DistributedDataParallel and shards its loader per rank; the loop then logs, shows bars and
writes checkpoints on rank 0 only, waits at a barrier after each write, and sums its epoch
metrics over the ranks.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1

    @classmethod
    def current(cls) -> Ranks:
        """This process's rank and the job's world size (0 of 1 outside torch.distributed)."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs, shows progress and writes files."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait until every rank is here (after rank 0 wrote a checkpoint)."""
        if self.world_size > 1:
            dist.barrier()

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` summed over the ranks, in place (a metric's sum and count)."""
        if self.world_size > 1:
            dist.all_reduce(tensor)
        return tensor
