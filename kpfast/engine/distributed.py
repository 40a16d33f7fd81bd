"""Data-parallel training on ``torch.distributed``: one process per device, started by ``torchrun``
(or by SLURM's ``srun``), the model in DistributedDataParallel, every loader sharded per rank::

    torchrun --nproc-per-node 8 -m kpfast train ...                      # one machine, 8 GPUs
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d \\
        --rdzv-endpoint host0:29400 --rdzv-id job7 -m kpfast train ...    # on each of 2 machines

Initialisation is ``env://``: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT as torchrun
sets them. Under ``srun`` without torchrun, SLURM_PROCID, SLURM_NTASKS and SLURM_LOCALID stand in
for the first three (the job script exports MASTER_ADDR and MASTER_PORT). Without any of these,
or with a world of one, nothing is initialised and a run is the plain single-process run.

The policies, in one place:

* **Backend and devices**: NCCL on CUDA (with gloo beside it for CPU tensors), gloo on the CPU;
  rank r drives ``cuda:LOCAL_RANK`` (or ``cuda:0`` where the launcher shows each process its own
  GPU only). On the CPU, torchrun gives each rank one thread (OMP_NUM_THREADS=1) unless told
  otherwise.
* **Batch and learning rate**: a run's batch size is the *global* batch, split evenly over the
  ranks, and its learning rate belongs to that global batch. The same command on 1 or N ranks is
  therefore the same run: the same steps per epoch, LR schedule and data order, and the same
  weights up to the order of floating-point sums (tests/test_distributed.py). To train with a
  larger global batch (to keep each GPU's share when adding GPUs), scale the LR with it (the
  linear scaling rule of Goyal et al., 2017: k times the batch, k times the LR; the one-cycle
  schedule's ramp is the warm-up it asks for).
* **BatchNorm**: by default each rank normalises with its own share of the batch (DDP's default,
  and the only choice on the CPU: torch's SyncBatchNorm runs on GPUs only); the running statistics
  are rank 0's, broadcast to the others at every forward, and are what checkpoints hold. With
  ``sync_batchnorm=True`` (``--sync-bn``, CUDA) the statistics are those of the global batch, so N
  GPUs compute exactly what one GPU computes with the whole batch, at the cost of one all-reduce
  per BatchNorm layer and pass.
* **Keys**: each rank loads the key file itself (every machine needs a copy); before the first
  step the fit loop compares the ranks' key fingerprints and stops the job if any differs. Key
  material never crosses the wire.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConfigError, DeviceError
from .device import resolve_device
from .ranks import Ranks

__all__ = ["Launch", "launch_env", "process_group", "rank_device", "wrap"]


@dataclass(frozen=True)
class Launch:
    """What the launcher told this process (its environment)."""

    rank: int
    world_size: int
    local_rank: int
    source: str  # "torchrun" or "SLURM"


def launch_env(env: dict[str, str] | None = None) -> Launch | None:
    """The rank, world size and local rank the launcher set, or None for a single process."""
    env = dict(os.environ if env is None else env)
    if "WORLD_SIZE" in env or "RANK" in env:
        names, source = ("RANK", "WORLD_SIZE", "LOCAL_RANK"), "torchrun"
    elif int(env.get("SLURM_NTASKS", "1") or 1) > 1:
        names, source = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"), "SLURM"
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in env]
        if missing:
            raise ConfigError(f"this process is one of {env['SLURM_NTASKS']} SLURM tasks, but {' and '.join(missing)} "
                              "is not set: export MASTER_ADDR (the first node's host name) and MASTER_PORT (a free "
                              "port) in the job script, or start the ranks with torchrun")
    else:
        return None
    values = []
    for name in names:
        text = env.get(name, "0" if name in ("LOCAL_RANK", "SLURM_LOCALID") else None)
        try:
            values.append(int(text))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ConfigError(f"environment variable {name}={text!r} is not a whole number (set by the launcher; "
                              "start the ranks with torchrun)") from None
    rank, world, local = values
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ConfigError(f"the launcher's {names[0]}={rank}, {names[1]}={world}, {names[2]}={local} do not describe a "
                          "rank of a job; start the ranks with torchrun")
    return Launch(rank, world, local, source)


def rank_device(device: str | torch.device, ranks: Ranks | None = None) -> torch.device:
    """The device this rank trains on: `device` itself on the CPU or in a single process;
    ``cuda:LOCAL_RANK`` for ``cuda`` in a distributed job (``cuda:0`` when the launcher shows each
    process a single GPU)."""
    resolved = resolve_device(device)
    ranks = ranks or Ranks.current()
    if not ranks.distributed or resolved.type != "cuda":
        return resolved
    count = torch.cuda.device_count()
    if resolved.index is not None and resolved.index != (ranks.local_rank if count > 1 else 0):
        raise DeviceError(f"device {str(device)!r}: in a distributed job each rank drives its own GPU "
                          f"(cuda:LOCAL_RANK); pass --device cuda")
    if count == 1:
        return torch.device("cuda", 0)
    if ranks.local_rank >= count:
        raise DeviceError(f"LOCAL_RANK {ranks.local_rank} has no GPU: this machine has {count} CUDA GPU(s); start at most "
                          f"{count} processes per machine (torchrun --nproc-per-node {count})")
    return torch.device("cuda", ranks.local_rank)


@contextlib.contextmanager
def process_group(device: str | torch.device = "cpu", *,
                  timeout: datetime.timedelta | None = None) -> Iterator[Ranks]:
    """Join the job the launcher started (``env://``) for the body of the ``with``, and leave it
    afterwards; yields this process's :class:`Ranks`. Outside a distributed launch (or already
    inside a process group) it only yields the current ranks.

    The backend follows `device`: NCCL for CUDA tensors (after selecting this rank's GPU) beside
    gloo for the few CPU tensors and objects the engine exchanges (metric sums, RNG states, a
    checkpoint read by rank 0); gloo alone on the CPU.
    """
    launch = launch_env()
    if launch is None or launch.world_size == 1 or dist.is_initialized():
        yield Ranks.current()
        return
    ranks = Ranks(launch.rank, launch.world_size, launch.local_rank)
    local = rank_device(device, ranks)
    if local.type == "cuda":
        torch.cuda.set_device(local)
    backend = "cpu:gloo,cuda:nccl" if local.type == "cuda" else "gloo"
    try:
        dist.init_process_group(backend, init_method="env://", rank=launch.rank, world_size=launch.world_size,
                                **({"timeout": timeout} if timeout is not None else {}))
    except ValueError as e:  # env:// without MASTER_ADDR / MASTER_PORT
        raise ConfigError(f"cannot join the distributed job: {e}") from None
    try:
        yield ranks
    finally:
        dist.destroy_process_group()


def wrap(model: nn.Module, device: torch.device, ranks: Ranks | None = None, *,
         sync_batchnorm: bool = False) -> nn.Module:
    """`model` in DistributedDataParallel in a distributed job, else `model` itself.

    Keep the unwrapped `model` for state dicts and evaluation; train through the returned module.
    `sync_batchnorm` converts its BatchNorm layers (in place, the parameters kept) to SyncBatchNorm.
    """
    ranks = ranks or Ranks.current()
    if sync_batchnorm and device.type != "cuda":
        raise ConfigError("synchronised BatchNorm needs CUDA (torch's SyncBatchNorm has no CPU kernel); "
                          "on the CPU each rank normalises with its share of the batch")
    if not ranks.distributed:
        return model
    if sync_batchnorm:
        for name, child in list(model.named_children()):
            setattr(model, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

