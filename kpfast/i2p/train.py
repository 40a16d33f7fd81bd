"""Training the image-to-image networks on the fit loop: h_θ against frozen ψ, and the inverse
network.

Both follow the paper's recipe: SGD (lr 0.1, momentum 0.9, weight decay 5e-4), batch 128, LR
x0.2 at 30 %, 60 % and 80 % of training (epochs 60/120/160 of 200, scaled to the budget), a
validation split, and the weights of the epoch with the lowest validation loss are kept.

`train_net` is that recipe on :func:`kpfast.engine.fit`: with a `checkpoint` path it saves its
state atomically (after an epoch, at most every `checkpoint_every` seconds, and always before
stopping at a deadline) and resumes from it; a `Deadline` stops it cleanly between epochs
(`TimeLimitReached`), so a long run can continue in the next call of the same command.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..data import DeviceLoader, ImageSet
from ..engine import Amp, Deadline, autocast, eval_mode, fit, resolve_device, scheduler
from ..engine.device import to_device
from ..engine.distributed import wrap
from ..engine.ranks import Ranks
from ..errors import DataError, TimeLimitReached
from .loss import TransformLoss, protect

CHECKPOINT_TYPE = "i2p-net"
Batch = tuple[torch.Tensor, torch.Tensor]
StepLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]

__all__ = ["Deadline", "FitResult", "TimeLimitReached", "train_net", "train_transform"]


@dataclass
class FitResult:
    model: nn.Module  # holds the best (lowest validation loss) weights
    history: list[dict[str, float]] = field(default_factory=list)  # per epoch: train_*/val_* means
    best_epoch: int = 0  # 1-based
    best_val_loss: float = float("inf")


def mean_terms(step_loss: StepLoss, net: nn.Module, batches: Iterable[Batch], device: torch.device,
               amp: Amp = "auto") -> dict[str, float]:
    """Each term of `step_loss` averaged over the images of `batches`, in eval mode, no gradients."""
    sums: dict[str, torch.Tensor] = {}
    seen = 0
    with eval_mode(net), autocast(device, amp):
        for x, y in batches:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            for k, v in step_loss(net, x, y).items():
                sums[k] = sums.get(k, 0) + v.detach().double() * len(y)
            seen += len(y)
    if not seen:
        raise DataError("the validation loader yielded no data")
    return {k: float(v) / seen for k, v in sums.items()}


def train_net(
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
    amp: Amp = "auto",
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
    device = resolve_device(device)
    torch.manual_seed(Ranks.current().seed(seed))
    to_device(net, device)
    trained = wrap(net, device)  # DistributedDataParallel under torchrun (the loader is sharded)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    lr_schedule = scheduler(optimizer, max(1, epochs * len(train_loader)), "step")

    def step(batch: Batch) -> dict[str, torch.Tensor]:
        x, y = (t.to(device, non_blocking=True) for t in batch)
        with autocast(device, amp):
            terms = step_loss(trained, x, y)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
        lr_schedule.step()
        return {f"train_{k}": v for k, v in terms.items()}

    def validate() -> dict[str, float]:
        return {f"val_{k}": v for k, v in mean_terms(step_loss, net, val_loader, device, amp).items()}

    # A width-1 U-Net's state is about 400 MB: saving it after every epoch can cost more than
    # the epoch, hence `checkpoint_every` (the last epoch is always saved: a rerun returns at once).
    fitted = fit(step, train_loader, epochs=epochs, kind=CHECKPOINT_TYPE,
                 state={"model": net, "optimizer": optimizer, "schedule": lr_schedule},
                 run={"settings": {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "seed": seed}},
                 checkpoint=checkpoint, resume=True, save_every=checkpoint_every, deadline=deadline,
                 validate=validate, select="best", monitor="val_loss", progress=progress, desc=desc, log=log)
    net.eval()
    return FitResult(net, fitted.history, fitted.best_epoch or 0, fitted.best_value or float("inf"))


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
    `kwargs` go to `train_net` (lr, checkpoint, deadline, progress, ...)."""
    loss.to(device)

    def step(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        t = loss(protect(net, x), x, y)
        return {"loss": t.loss, "ce": t.ce, "feat": t.feat, "acc": t.accuracy}

    train_loader = DeviceLoader(train_set, batch_size, device=device, shuffle=True, augment=True, seed=seed,
                                ranks=Ranks.current())
    val_loader = DeviceLoader(val_set, 2 * batch_size, device=device, shuffle=False)
    return train_net(h, step, train_loader, val_loader, epochs=epochs, device=device, seed=seed,
                     desc=kwargs.pop("desc", f"h_θ λ={loss.lam:g}"), **kwargs)
