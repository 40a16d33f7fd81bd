"""Where this process stands in a distributed job, and the few collective steps the engine takes.

Without ``torch.distributed`` initialised every call is a no-op for rank 0 of 1, so single-process
runs pay nothing. A data-parallel run (``torchrun``, :mod:`kpfast.engine.distributed`) initialises
the process group, wraps the model in DistributedDataParallel and shards its loader per rank; the
loop then logs, shows bars and writes checkpoints on rank 0 only, waits at a barrier after each
write, sums its epoch metrics over the ranks, and takes every decision that changes what the
ranks do next (stop at the deadline, save now, resume from a checkpoint) on rank 0, so that no
rank waits at a collective the others never reach.

Rank 0's errors reach every rank: :meth:`Ranks.from_main` runs a function on rank 0 and raises
its error on every rank (the same message), instead of leaving the others at the next collective.
On the other ranks such an error is marked as an echo of rank 0's (:func:`echoes_main`), as are
the errors :meth:`Ranks.check_same_run` raises on every rank alike: whoever reports errors (the
command line) prints those on rank 0 only, so a job of N ranks shows one line, not N.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from ..errors import ConfigError, KeyMismatchError, KpfastError
from .checkpoint import run_changes

T = TypeVar("T")
E = TypeVar("E", bound=BaseException)


def echoes_main(error: BaseException) -> bool:
    """Whether `error` is rank 0's error raised again on this (other) rank: rank 0 reports it."""
    return getattr(error, "echo_of_main", False)


def _echo(error: E, ranks: Ranks) -> E:
    """`error`, marked as an echo of rank 0's where this is another rank."""
    if not ranks.is_main:
        error.echo_of_main = True  # type: ignore[attr-defined]
    return error


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # the rank within its machine: which GPU it drives

    @classmethod
    def current(cls) -> Ranks:
        """This process's rank and the job's world size (0 of 1 outside torch.distributed)."""
        if dist.is_available() and dist.is_initialized():
            rank, world = dist.get_rank(), dist.get_world_size()
            return cls(rank, world, int(os.environ.get("LOCAL_RANK", rank)))
        return cls()

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs, shows progress and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def seed(self, seed: int) -> int:
        """This rank's seed of the global RNG (dropout and the like): `seed` itself on rank 0, so a
        single-process run is unchanged; other ranks draw other numbers from a seed of their own."""
        return seed if self.rank == 0 else int(np.random.SeedSequence([seed, self.rank]).generate_state(1)[0])

    def barrier(self) -> None:
        """Wait until every rank is here (after rank 0 wrote a checkpoint)."""
        if self.distributed:
            dist.barrier()

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` summed over the ranks, in place (a metric's sum and count)."""
        if self.distributed:
            dist.all_reduce(tensor)
        return tensor

    def share_buffers(self, module: torch.nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) in `module` on every rank: after training,
        every rank holds exactly the model rank 0 saves (the parameters agree already)."""
        if self.distributed:
            for buffer in module.buffers():
                dist.broadcast(buffer, src=0)

    def broadcast(self, obj: T) -> T:
        """Rank 0's `obj` on every rank (any picklable object; never key material)."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        objs: list[Any] = [None] * self.world_size
        dist.all_gather_object(objs, obj)
        return objs

    def from_main(self, fn: Callable[[], T]) -> T:
        """``fn()`` run on rank 0 only; its result on every rank, or its error raised on every rank.

        For what one rank must decide for all: whether a checkpoint exists and what it holds, whether
        an output may be written, whether the deadline has passed. A :class:`KpfastError` keeps its
        type and message on every rank.
        """
        return self._on_main(fn, share=True)

    def main_first(self, fn: Callable[[], T]) -> T:
        """``fn()`` on rank 0, then on the other ranks once it is done (a download or a decode
        cache that rank 0 writes and the others then read); an error on rank 0 stops every rank."""
        result = self._on_main(fn, share=False)
        return result if self.is_main else fn()

    def _on_main(self, fn: Callable[[], T], share: bool) -> T:
        if not self.distributed:
            return fn()
        outcome: tuple[str, Any] = ("ok", None)
        result: Any = None
        if self.is_main:
            try:
                result = fn()
                outcome = ("ok", result if share else None)
            except KpfastError as e:
                outcome = ("error", e)
            except BaseException as e:  # a bug or Ctrl-C on rank 0: stop the others too, then re-raise here
                self.broadcast(("error", RuntimeError(f"rank 0 failed: {type(e).__name__}: {e}")))
                raise
        status, value = self.broadcast(outcome)
        if status == "error":
            raise _echo(value, self)
        return result if self.is_main else value

    def check_same_run(self, run: Mapping[str, Any]) -> None:
        """Refuse to start unless every rank has the same run definition, before the first step.

        Each rank loaded its key from its own copy of the key file; only the fingerprints are
        compared here, the key never leaves its process. A rank with another key gets a
        KeyMismatchError naming the ranks and their fingerprints; other settings a ConfigError.
        """
        if not self.distributed:
            return
        runs = self.all_gather(dict(run))
        main = runs[0]
        fingerprint = main.get("key_fingerprint")
        others = [(r, x.get("key_fingerprint")) for r, x in enumerate(runs) if x.get("key_fingerprint") != fingerprint]
        if others:
            listed = ", ".join(f"rank {r} has {f}" for r, f in others)
            raise _echo(KeyMismatchError(f"the ranks of this job hold different keys: rank 0 has key fingerprint "
                                         f"{fingerprint}, {listed}; every rank must load the same key file (copy it "
                                         "to every machine)"), self)
        changed = [r for r, x in enumerate(runs) if x != main]
        if changed:
            diff = ", ".join(run_changes(main, runs[changed[0]]))
            raise _echo(ConfigError(f"the ranks of this job were started with different settings (rank 0 -> rank "
                                    f"{changed[0]}: {diff}); start every rank with the same command"), self)
