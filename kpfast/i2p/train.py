"""Training loops of the image-to-image networks: h_θ against frozen ψ, and the inverse network.

Both follow the paper's recipe: SGD (lr 0.1, momentum 0.9, weight decay 5e-4), batch 128, LR
x0.2 at 30 %, 60 % and 80 % of training (epochs 60/120/160 of 200, scaled to the budget), a
validation split, and the weights of the epoch with the lowest validation loss are kept.

`fit` is the shared loop. With a `checkpoint` path it saves its state atomically (after an
epoch, at most every `checkpoint_every` seconds, and always before stopping at a deadline) and
resumes from it; a `Deadline` stops it cleanly between epochs (`TimeLimitReached`), so a long
run can continue in the next call of the same command.
"""
from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from ..atomic import atomic_write
from ..data import DeviceLoader, ImageSet
from ..train import lr_at
from .loss import TransformLoss, protect

CHECKPOINT_FORMAT = "kpfast-i2p-fit"
Batch = tuple[torch.Tensor, torch.Tensor]
StepLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]


class TimeLimitReached(RuntimeError):
    """The run stopped at its time limit with its state saved: run the same command again."""


@dataclass(frozen=True)
class Deadline:
    """A wall-clock limit for a whole run, checked between epochs (None: no limit)."""

    at: float | None = None  # time.monotonic() value

    @classmethod
    def after(cls, seconds: float | None) -> Deadline:
        return cls(None if seconds is None else time.monotonic() + seconds)

    def check(self, upcoming: float = 0.0, what: str = "") -> None:
        """Raise TimeLimitReached if work of `upcoming` seconds would end past the deadline."""
        if self.at is not None and time.monotonic() + upcoming > self.at:
            raise TimeLimitReached(f"time limit reached{' before ' + what if what else ''}; "
                                   "progress is saved: run the same command again to continue")


@dataclass
class FitResult:
    model: nn.Module  # holds the best (lowest validation loss) weights
    history: list[dict[str, float]] = field(default_factory=list)  # per epoch: train_*/val_* means
    best_epoch: int = 0  # 1-based
    best_val_loss: float = float("inf")


def _use_amp(amp: bool | Literal["auto"], device: torch.device) -> bool:
    return device.type == "cuda" if amp == "auto" else bool(amp)


def _means(step_loss: StepLoss, net: nn.Module, batches: Iterable[Batch], device: torch.device,
           use_amp: bool) -> dict[str, float]:
    sums: dict[str, torch.Tensor] = {}
    seen = 0
    with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=use_amp):
        for x, y in batches:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            for k, v in step_loss(net, x, y).items():
                sums[k] = sums.get(k, 0) + v.detach().double() * len(y)
            seen += len(y)
    if not seen:
        raise ValueError("the validation loader yielded no data")
    return {k: float(v) / seen for k, v in sums.items()}


def fit(
    net: nn.Module,
    step_loss: StepLoss,
    train_loader: DeviceLoader,
    val_loader: Iterable[Batch],
    *,
    epochs: int,
    device: str | torch.device,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    amp: bool | Literal["auto"] = "auto",
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: float = 0.0,
    deadline: Deadline = Deadline(),
    seed: int = 0,
    progress: bool = True,
    desc: str = "fit",
    log: Callable[[str], None] = print,
) -> FitResult:
    """Minimise `step_loss(net, x, y)["loss"]` with SGD and the step schedule; keep the weights
    of the epoch with the lowest validation loss. Other keys of the dict are logged as means.
    `progress` shows tqdm bars; `log` gets one line per epoch either way."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    steps = len(train_loader)
    if steps < 1:
        raise ValueError("the training loader is empty")
    device = torch.device(device)
    use_amp = _use_amp(amp, device)
    torch.manual_seed(seed)
    net.to(device)
    if device.type == "cuda":
        net.to(memory_format=torch.channels_last)  # faster convolutions on tensor cores
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    result = FitResult(net)
    best_state = copy.deepcopy(net.state_dict())
    path = Path(checkpoint) if checkpoint is not None else None
    start = 0
    if path is not None and path.exists():
        start = _restore(path, net, optimizer, result, epochs)
        best_state = torch.load(path, map_location="cpu", weights_only=True)["best_state"]
        if start < epochs:
            log(f"{desc}: resuming after epoch {start}/{epochs}")
    last_seconds, saved_at = 0.0, time.monotonic()
    for epoch in range(start, epochs):
        try:
            deadline.check(last_seconds, f"{desc} epoch {epoch + 1}")
        except TimeLimitReached:
            if path is not None and epoch > start:  # keep this call's progress
                _save(path, net, optimizer, result, best_state, epochs)
            raise
        began = time.perf_counter()
        net.train()
        train_loader.set_epoch(epoch)
        sums: dict[str, torch.Tensor] = {}
        seen = 0
        bar = tqdm(train_loader, total=steps, desc=f"{desc} {epoch + 1}/{epochs}", disable=not progress, leave=False)
        for i, (x, y) in enumerate(bar):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(epoch * steps + i, epochs * steps, lr, "step")
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, torch.bfloat16, enabled=use_amp):
                terms = step_loss(net, x, y)
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            optimizer.step()
            for k, v in terms.items():  # accumulated on the device: no host sync per step
                sums[k] = sums.get(k, 0) + v.detach().double() * len(y)
            seen += len(y)
        bar.close()
        net.eval()
        row = {f"train_{k}": float(v) / seen for k, v in sums.items()}
        row.update({f"val_{k}": v for k, v in _means(step_loss, net, val_loader, device, use_amp).items()})
        row["seconds"] = last_seconds = time.perf_counter() - began
        result.history.append(row)
        if row["val_loss"] < result.best_val_loss:
            result.best_val_loss, result.best_epoch = row["val_loss"], epoch + 1
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        # A width-1 U-Net's state is about 400 MB: saving it after every epoch can cost more than
        # the epoch, hence `checkpoint_every`. The last epoch is always saved (a rerun returns at once).
        if path is not None and (epoch + 1 == epochs or time.monotonic() - saved_at >= checkpoint_every):
            _save(path, net, optimizer, result, best_state, epochs)
            saved_at = time.monotonic()
        log(f"{desc} {epoch + 1}/{epochs}  " + "  ".join(f"{k} {v:.4g}" for k, v in row.items()))
    net.load_state_dict(best_state)
    net.eval()
    return result


def _save(path: Path, net: nn.Module, optimizer: torch.optim.Optimizer, result: FitResult,
          best_state: dict[str, torch.Tensor], epochs: int) -> None:
    state = {
        "format": CHECKPOINT_FORMAT, "epochs": epochs, "epoch": len(result.history),
        "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "best_state": {k: v.detach().cpu() for k, v in best_state.items()},
        "optimizer": optimizer.state_dict(), "history": result.history,
        "best_epoch": result.best_epoch, "best_val_loss": result.best_val_loss,
        "rng": torch.get_rng_state(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: torch.save(state, f))


def _restore(path: Path, net: nn.Module, optimizer: torch.optim.Optimizer, result: FitResult, epochs: int) -> int:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a kpfast i2p training checkpoint")
    if state["epochs"] != epochs:
        raise ValueError(f"cannot resume {path}: it was made for {state['epochs']} epochs, not {epochs} "
                         "(delete it to start over)")
    net.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    result.history = list(state["history"])
    result.best_epoch, result.best_val_loss = state["best_epoch"], state["best_val_loss"]
    torch.set_rng_state(state["rng"])
    return int(state["epoch"])


def train_transform(
    h: nn.Module,
    loss: TransformLoss,
    train_set: ImageSet,
    val_set: ImageSet,
    *,
    epochs: int,
    device: str | torch.device,
    batch_size: int = 128,
    seed: int = 0,
    **kwargs,
) -> FitResult:
    """Train h_θ so that frozen ψ classifies x' = sigmoid(h_θ(x)) while x' moves away from x in
    F's feature space (`loss`); plain inputs get the reference crop + flip augmentation.
    `kwargs` go to `fit` (lr, checkpoint, deadline, progress, ...)."""
    loss.to(device)

    def step(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        t = loss(protect(net, x), x, y)
        return {"loss": t.loss, "ce": t.ce, "feat": t.feat, "acc": t.accuracy}

    train_loader = DeviceLoader(train_set, batch_size, device=device, shuffle=True, augment=True, seed=seed)
    val_loader = DeviceLoader(val_set, 2 * batch_size, device=device, shuffle=False)
    return fit(h, step, train_loader, val_loader, epochs=epochs, device=device, seed=seed,
               desc=kwargs.pop("desc", f"h_θ λ={loss.lam:g}"), **kwargs)
