"""Training and evaluating a classifier behind an input transform, on the fit loop: SGD with a
step-wise LR schedule on `model(transform(x))`, resumable to the same result.

The loader yields uint8 batches `(x [B,C,H,W], y [B])`; the step applies the (keyed or plain)
transform and then the model, exactly as at inference: one code path for training and serving.
Every track that trains a classifier comes here: protected models (`kpfast train`, the
reproduction grid), the image-to-perturbation track's classifiers, and the attacks that
fine-tune a stolen model.

Reproducibility: `torch.manual_seed(seed)` is called at the start (it drives dropout and any
global-RNG use). Data order and augmentation come from the loader, which the fit loop replays
on resume (`set_epoch`, or a checkpointed `loader.generator`), so a resumed run ends
bit-identical on the CPU.

Distributed (:mod:`kpfast.engine.distributed`): in a job started by torchrun the model trains in
DistributedDataParallel and the loader yields each rank's share of the global batch
(``DeviceLoader(..., ranks=Ranks.current())``); ranks other than 0 seed their global RNG with a
seed of their own (`Ranks.seed`). Evaluation runs on the unwrapped model, on every rank.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, DataError
from .amp import Amp, autocast
from .deadline import Deadline
from .device import prefer_channels_last, resolve_device, to_device
from .distributed import wrap
from .loop import fit
from .ranks import Ranks
from .schedule import SCHEDULES, scheduler

CHECKPOINT_TYPE = "classifier"
CHECKPOINT_NAME = "last.pt"


@dataclass(frozen=True)
class Recipe:
    """The training recipe's defaults, in one place: `train` here, `kpfast train`, the
    reproduction grid and the demo all start from these (the published setting is ResNet-18 with
    a peak LR of 0.2: see `default_lr`)."""

    epochs: int = 10
    batch_size: int = 128  # 512 on CUDA: see default_batch_size
    lr: float = 0.05  # peak of the schedule; per model: default_lr
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = True
    label_smoothing: float = 0.1
    schedule: str = "onecycle"


DEFAULTS = Recipe()


def default_model(device: str | torch.device) -> str:
    # ResNet-18 is the published setting; on a CPU only the small CNN trains in useful time.
    return "resnet18" if torch.device(device).type == "cuda" else "small_cnn"


def default_batch_size(device: str | torch.device) -> int:
    return 512 if torch.device(device).type == "cuda" else DEFAULTS.batch_size


def default_lr(model: str) -> float:
    """Peak one-cycle learning rate: the reference's 0.2 for ResNet-18; less for the others,
    which diverge with it (small_cnn: 0.2 lost 60 points on the synthetic set in 3 epochs)."""
    return {"resnet18": 0.2, "resnet20": 0.1}.get(model, DEFAULTS.lr)


@dataclass
class TrainResult:
    model: nn.Module
    loss: list[float] = field(default_factory=list)  # mean training loss per epoch
    accuracy: list[float] = field(default_factory=list)  # training accuracy per epoch (augmented data)
    eval_accuracy: list[float] = field(default_factory=list)  # per epoch, when an eval_loader is given
    seconds: list[float] = field(default_factory=list)  # training wall time per epoch


def batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Evaluation batches of a whole set; slices are views, so batching copies nothing."""
    return list(zip(images.split(batch_size), labels.split(batch_size)))


def evaluate(
    model: nn.Module,
    transform: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: str | torch.device,
    *,
    amp: Amp = "auto",
) -> dict[str, Any]:
    """Accuracy, per-class accuracy (None for classes absent from the data) and mean loss of
    `model(transform(x))`. The model's train/eval mode is restored afterwards."""
    device = resolve_device(device)
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    hits = totals = None
    with torch.inference_mode(), autocast(device, amp):
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            logits = model(transform(x)).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            if hits is None:
                hits = torch.zeros(logits.shape[1], dtype=torch.int64, device=device)
                totals = torch.zeros_like(hits)
            totals += torch.bincount(y, minlength=len(totals))
            hits += torch.bincount(y[logits.argmax(1) == y], minlength=len(hits))
    model.train(was_training)
    if totals is None or int(totals.sum()) == 0:
        raise DataError("evaluate: the loader yielded no data")
    n = int(totals.sum())
    return {
        "accuracy": int(hits.sum()) / n,
        "per_class_accuracy": [h / t if t else None for h, t in zip(hits.tolist(), totals.tolist())],
        "loss": float(loss_sum) / n,
    }


def train(
    model: nn.Module,
    transform: nn.Module,
    train_loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    epochs: int,
    lr: float = DEFAULTS.lr,
    momentum: float = DEFAULTS.momentum,
    weight_decay: float = DEFAULTS.weight_decay,
    nesterov: bool = DEFAULTS.nesterov,
    label_smoothing: float = DEFAULTS.label_smoothing,
    schedule: str = DEFAULTS.schedule,
    device: str | torch.device,
    amp: Amp = "auto",
    compile: bool = False,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    seed: int = 0,
    eval_loader: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
    deadline: Deadline = Deadline(),
    progress: bool = True,
    log: Callable[[str], None] = print,
    sync_batchnorm: bool = False,
) -> TrainResult:
    """Train `model` on `model(transform(x))` and return it with per-epoch statistics.

    amp="auto" uses bf16 autocast on CUDA only. With `checkpoint_dir`, `last.pt` is rewritten
    atomically after every epoch (model, optimizer, schedule, RNG states, transform config and key
    fingerprint; never the key); `resume=True` continues from it (or starts fresh if absent),
    refusing a different key, transform or settings. `deadline` stops cleanly between epochs.
    progress=False prints nothing; otherwise tqdm shows each epoch and `log` gets a one-line
    summary per epoch. In a distributed job `model` is trained through DistributedDataParallel
    (`sync_batchnorm`: global BatchNorm statistics, CUDA only) and the loader must be sharded for
    the job's ranks.
    """
    if schedule not in SCHEDULES:
        raise ConfigError(f"unknown schedule {schedule!r}; expected one of {', '.join(SCHEDULES)}")
    if resume and checkpoint_dir is None:
        raise ConfigError("resume=True needs a checkpoint_dir")
    try:
        steps_per_epoch = len(train_loader)  # type: ignore[arg-type]
    except TypeError:
        raise ConfigError("train_loader must have a len() (the LR schedule needs the number of steps)") from None
    device = resolve_device(device)
    ranks = Ranks.current()
    sharded = getattr(train_loader, "ranks", ranks)
    if (sharded.rank, sharded.world_size) != (ranks.rank, ranks.world_size):
        raise ConfigError(f"the training loader is sharded for {sharded.world_size} rank(s) but this job has "
                          f"{ranks.world_size}: build it with ranks=Ranks.current()")
    torch.manual_seed(ranks.seed(seed))
    to_device(model, device)
    transform.to(device)
    trained = wrap(model, device, ranks, sync_batchnorm=sync_batchnorm)
    net = torch.compile(trained) if compile else trained
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay,
                                nesterov=nesterov)
    lr_schedule = scheduler(optimizer, max(1, epochs * steps_per_epoch), schedule)

    def step(batch: tuple[torch.Tensor, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        x, y = (t.to(device, non_blocking=True) for t in batch)
        with torch.no_grad():  # the transform is fixed preprocessing: no gradients needed
            inputs = transform(x)
        if prefer_channels_last(device):
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            logits = net(inputs)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lr_schedule.step()
        return {"loss": loss.detach(), "accuracy": (logits.argmax(1) == y).float().mean()}

    def validate() -> dict[str, float]:
        return {"eval_accuracy": evaluate(net if trained is model else model, transform, eval_loader, device,
                                          amp=amp)["accuracy"]}

    settings = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "nesterov": nesterov,
                "label_smoothing": label_smoothing, "schedule": schedule, "steps_per_epoch": steps_per_epoch,
                "seed": seed, "data_seed": getattr(train_loader, "seed", None)}
    fitted = fit(step, train_loader, epochs=epochs, kind=CHECKPOINT_TYPE,
                 state={"model": model, "optimizer": optimizer, "schedule": lr_schedule},
                 run={"settings": settings, "transform": transform.config(), "key_fingerprint": transform.fingerprint()},
                 checkpoint=Path(checkpoint_dir, CHECKPOINT_NAME) if checkpoint_dir is not None else None,
                 resume=resume, deadline=deadline, validate=validate if eval_loader is not None else None,
                 progress=progress, log=log if progress else (lambda _: None), describe=_describe)
    result = TrainResult(model)
    for row in fitted.history:
        result.loss.append(row["loss"])
        result.accuracy.append(row["accuracy"])
        result.seconds.append(row["seconds"])
        if "eval_accuracy" in row:
            result.eval_accuracy.append(row["eval_accuracy"])
    return result


def _describe(row: Mapping[str, float]) -> str:
    line = f"loss {row['loss']:.4f}  train acc {row['accuracy']:.2%}  {row['seconds']:.1f}s"
    return line + (f"  eval acc {row['eval_accuracy']:.2%}" if "eval_accuracy" in row else "")
