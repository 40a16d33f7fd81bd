"""The fit loop every kpfast track trains through: protected classifiers, the image-to-perturbation
networks, and the attacks that train (GAN, fine-tuning).

What a track brings is a *step*, ``step(batch) -> {name: scalar tensor}``, that does its own
forward, backward and optimizer updates (a classifier: one optimizer; a GAN: two), and the
*state* it needs to continue, ``{name: object with state_dict()/load_state_dict()}`` (models,
optimizers, schedulers). The loop owns the rest:

* epochs over a loader with ``len()``; ``loader.set_epoch(e)`` is called before epoch e when it
  exists (the epoch's order then depends on (seed, e) alone, as with DistributedSampler), and a
  ``loader.generator`` (a torch.Generator) has its state checkpointed;
* a checkpoint (:mod:`kpfast.engine.checkpoint`) written atomically at the end of an epoch when
  `save_every` seconds have passed since the last one (0: every epoch), always after the last
  epoch and before stopping at a deadline; ``resume=True`` continues from it, bit-identical on
  the CPU (RNG states included), and refuses a run whose `run` definition changed;
* a :class:`~kpfast.engine.deadline.Deadline` checked between epochs, Ctrl-C turned into
  :class:`~kpfast.errors.Interrupted` saying what is saved;
* epoch metrics: the step's values averaged over the epoch's images, plus `validate()`'s;
* the last state, or with ``select="best"`` the modules of the epoch with the lowest
  ``row[monitor]``;
* rank awareness (:class:`~kpfast.engine.ranks.Ranks`, :mod:`kpfast.engine.distributed`): before
  the first step every rank must hold the same `run` (the same key fingerprint and settings);
  rank 0 logs, shows bars, reads and writes the checkpoint (its content reaches the other ranks
  over the process group, so only rank 0 needs the file), and decides for all when to stop or
  save; metrics are summed over ranks. The checkpoint records the global step, the world size
  and every rank's RNG states: a run resumes on any number of ranks (bit-identical on the CPU
  with the same number), each rank taking its own saved RNG state or, beyond those saved, a
  fresh one derived from the step.

Modules in `state` are put in train mode at the start of every epoch; `validate` sets the modes
it needs and restores them (see :func:`eval_mode`).
"""
from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError, Interrupted, TimeLimitReached
from ..report.progress import bar
from . import checkpoint as ckpt
from .deadline import Deadline
from .ranks import Ranks

Metrics = Mapping[str, torch.Tensor]


@dataclass
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch (all calls)
    best_epoch: int | None = None  # 1-based, with select="best"
    best_value: float | None = None


def fit(
    step: Callable[[Any], Metrics],
    loader: Iterable[Any],
    *,
    epochs: int,
    state: Mapping[str, Any],
    kind: str,
    run: Mapping[str, Any] | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    resume: bool = False,
    save_every: float = 0.0,
    deadline: Deadline = Deadline(),
    validate: Callable[[], Mapping[str, float]] | None = None,
    select: Literal["last", "best"] = "last",
    monitor: str = "val_loss",
    ranks: Ranks | None = None,
    progress: bool = True,
    desc: str = "epoch",
    describe: Callable[[Mapping[str, float]], str] | None = None,
    log: Callable[[str], None] = print,
) -> FitResult:
    """Run `step` over `loader` for `epochs` epochs (see the module docs); `kind` tags the
    checkpoint, `run` is what must not change between a run and its resumption, `describe`
    formats an epoch's row for `log` (default: every metric)."""
    steps = _length(loader)
    if epochs < 1:
        raise ConfigError(f"epochs must be >= 1, got {epochs}")
    if select not in ("last", "best"):
        raise ConfigError(f"select must be 'last' or 'best', got {select!r}")
    ranks = ranks or Ranks.current()
    say = log if ranks.is_main else (lambda _: None)
    describe = describe or (lambda row: "  ".join(f"{k} {v:.4g}" for k, v in row.items()))
    path = Path(checkpoint) if checkpoint is not None else None
    run = {"epochs": epochs, **(run or {})}
    data_gen = _generator(loader)
    modules = {name: m for name, m in state.items() if isinstance(m, nn.Module)}
    result, best = FitResult(), _Best(select, monitor)
    ranks.check_same_run(run)  # a rank with another key stops the job here, before any step

    def save(epochs_done: int) -> None:
        rng = ranks.all_gather(_rng_state(data_gen, ranks))
        ranks.from_main(lambda: ranks.is_main and ckpt.write(path, {  # a failed write stops every rank
            "format": ckpt.FORMAT, "version": ckpt.VERSION, "type": kind, "run": run,
            "epoch": epochs_done, "epochs": epochs, "step": epochs_done * steps, "history": result.history,
            "best": best.checkpoint(), "state": {name: _cpu(obj.state_dict()) for name, obj in state.items()},
            "rng": rng[0], "world_size": ranks.world_size, "rng_ranks": rng}))

    start = 0
    if resume and path is not None:
        previous = ranks.from_main(lambda: _read(path, kind, run) if path.exists() else None)
        if previous is not None:
            start = _restore(previous, path, state, result, best, data_gen, ranks)
            say(f"{desc}: resuming from {path} after epoch {start}/{epochs}"
                + (f" (saved by {previous.get('world_size', 1)} rank(s), continued by {ranks.world_size})"
                   if previous.get("world_size", 1) != ranks.world_size else ""))
    saved, saved_at, last_seconds = start, time.monotonic(), 0.0
    epoch = start
    try:
        for epoch in range(start, epochs):
            try:  # rank 0's clock decides for every rank
                ranks.from_main(lambda: deadline.check(last_seconds, f"{desc} {epoch + 1}"))
            except TimeLimitReached:
                if path is not None and saved < epoch:  # keep this call's progress
                    save(epoch)
                raise
            began = time.perf_counter()
            for module in modules.values():
                module.train()
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(epoch)
            meter = _Meter()
            for batch in bar(loader, total=steps, desc=f"{desc} {epoch + 1}/{epochs}", leave=False,
                             enabled=progress and ranks.is_main):
                meter.add(step(batch), _batch_size(batch))
            row = meter.means(ranks)
            row.update(validate() if validate is not None else {})
            row["seconds"] = last_seconds = time.perf_counter() - began
            due = path is not None and (epoch + 1 == epochs or time.monotonic() - saved_at >= save_every)
            row, due = ranks.broadcast((row, due))  # one history, one best epoch, one save decision
            result.history.append(row)
            best.update(epoch + 1, row, modules)
            if due:
                save(epoch + 1)
                saved, saved_at = epoch + 1, time.monotonic()
            say(f"{desc} {epoch + 1}/{epochs}  {describe(row)}")
    except KeyboardInterrupt:
        kept = (f"{path} keeps the progress saved so far" if path is not None
                else "nothing was saved (this run has no checkpoint)")
        raise Interrupted(f"interrupted during {desc} {epoch + 1}/{epochs}; {kept}") from None
    best.restore(modules)
    for module in modules.values():
        ranks.share_buffers(module)
    result.best_epoch, result.best_value = best.epoch, best.value
    return result


@contextlib.contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Eval mode and no gradients inside, each module's own mode restored afterwards."""
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


class _Meter:
    """Per-metric sums weighted by batch size, kept on the device (no host sync per step)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, metrics: Metrics, n: int) -> None:
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0) + v.detach().double() * n
        self.count += n

    def means(self, ranks: Ranks) -> dict[str, float]:
        if self.count == 0:
            raise ConfigError("the training loader yielded no data")
        names = list(self.sums)
        totals = torch.stack([*(self.sums[k].cpu() for k in names), torch.tensor(float(self.count), dtype=torch.float64)])
        totals = ranks.sum(totals).tolist()
        return {k: v / totals[-1] for k, v in zip(names, totals)}


class _Best:
    """The epoch with the lowest `monitor` and its modules' weights (select="best")."""

    def __init__(self, select: str, monitor: str) -> None:
        self.active, self.monitor = select == "best", monitor
        self.epoch: int | None = None
        self.value: float | None = None
        self.state: dict[str, dict[str, torch.Tensor]] | None = None

    def update(self, epoch: int, row: Mapping[str, float], modules: Mapping[str, nn.Module]) -> None:
        if not self.active:
            return
        if self.monitor not in row:
            raise ConfigError(f"select='best' monitors {self.monitor!r}, which no epoch metric provides "
                              f"(they are: {', '.join(row)})")
        if self.value is None or row[self.monitor] < self.value:
            self.epoch, self.value = epoch, row[self.monitor]
            self.state = {name: {k: v.detach().clone() for k, v in m.state_dict().items()} for name, m in modules.items()}

    def checkpoint(self) -> dict[str, Any] | None:
        if self.state is None:
            return None
        return {"epoch": self.epoch, "value": self.value, "state": {n: _cpu(s) for n, s in self.state.items()}}

    def load(self, saved: Mapping[str, Any] | None) -> None:
        if saved is not None:
            self.epoch, self.value, self.state = saved["epoch"], saved["value"], saved["state"]

    def restore(self, modules: Mapping[str, nn.Module]) -> None:
        if self.state is not None:
            for name, module in modules.items():
                module.load_state_dict(self.state[name])


def _read(path: Path, kind: str, run: Mapping[str, Any]) -> dict[str, Any]:
    """The checkpoint at `path`, checked to continue `run`."""
    saved = ckpt.load(path, kind)
    ckpt.check_run(path, saved["run"], run)
    return saved


def _restore(saved: Mapping[str, Any], path: Path, state: Mapping[str, Any], result: FitResult, best: _Best,
             data_gen: torch.Generator | None, ranks: Ranks) -> int:
    """Load a checkpoint into the live objects; returns the number of epochs done."""
    if (saved["rng"]["data"] is None) != (data_gen is None):
        raise CheckpointError(f"cannot resume {path}: the loader's generator was "
                              f"{'lost' if data_gen is None else 'added'}")
    missing = sorted(set(state) - set(saved["state"]))
    if missing:
        raise CheckpointError(f"cannot resume {path}: it holds no state for {', '.join(missing)}")
    for name, obj in state.items():
        obj.load_state_dict(saved["state"][name])
    result.history = [dict(row) for row in saved["history"]]
    best.load(saved["best"])
    if data_gen is not None:
        data_gen.set_state(saved["rng"]["data"])  # the data order is the same on every rank: rank 0's
    states = saved.get("rng_ranks") or [saved["rng"]]
    if ranks.rank >= len(states):  # more ranks than saved ones: a fresh stream of this rank's own
        torch.manual_seed(ranks.seed(int(saved["step"])))
        return int(saved["epoch"])
    rng = states[ranks.rank]
    torch.set_rng_state(rng["torch"])
    cuda = rng["cuda"]
    if cuda is not None and torch.cuda.is_available():
        if ranks.distributed and len(cuda) == 1:
            torch.cuda.set_rng_state(cuda[0])  # this rank's GPU
        elif not ranks.distributed and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    return int(saved["epoch"])


def _rng_state(data_gen: torch.Generator | None, ranks: Ranks) -> dict[str, Any]:
    cuda = None
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # One process per GPU: its own GPU only (reading the others would open a context on each).
        cuda = [torch.cuda.get_rng_state()] if ranks.distributed else torch.cuda.get_rng_state_all()
    return {"torch": torch.get_rng_state(), "cuda": cuda, "data": data_gen.get_state() if data_gen is not None else None}


def _cpu(state: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in state.items()}


def _length(loader: Iterable[Any]) -> int:
    try:
        steps = len(loader)  # type: ignore[arg-type]
    except TypeError:
        raise ConfigError("the training loader must have a len() (schedules need the number of steps)") from None
    if steps < 1:
        raise ConfigError("the training loader is empty")
    return steps


def _generator(loader: Iterable[Any]) -> torch.Generator | None:
    gen = getattr(loader, "generator", None)
    return gen if isinstance(gen, torch.Generator) else None


def _batch_size(batch: Any) -> int:
    """The number of images in a batch: the length of its first tensor (batches may nest)."""
    while isinstance(batch, (tuple, list)) and batch:
        batch = batch[0]
    return len(batch) if isinstance(batch, torch.Tensor) else 1
