"""Training loop: SGD + one-cycle LR on `model(transform(x))`, resumable to the same result.

The loader yields uint8 batches `(x [B,C,H,W], y [B])`; the loop applies the (keyed) transform
and then the model, exactly as at inference: one code path for training and serving.

Reproducibility: `torch.manual_seed(seed)` is called at the start (it drives dropout and any
global-RNG use). Data order and augmentation come from the loader, which `resume=True` must
be able to replay from the interrupted epoch on. Two loader protocols are supported:
- `loader.set_epoch(e)` (kpfast.data.DeviceLoader, like DistributedSampler): called before
  every epoch, so the epoch's shuffle and augmentation depend only on (loader seed, e);
- `loader.generator`, a torch.Generator drawn from as the loader iterates (a DataLoader built
  with `generator=`): its state is saved in the checkpoint and restored on resume.
The global RNG state is checkpointed too, so a resumed run ends bit-identical on CPU.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .atomic import atomic_write
from .protected import KeyMismatchError

CHECKPOINT_FORMAT = "kpfast-train-checkpoint"
SCHEDULES = ("onecycle", "cosine", "step")


@dataclass
class TrainResult:
    model: nn.Module
    loss: list[float] = field(default_factory=list)  # mean training loss per epoch
    accuracy: list[float] = field(default_factory=list)  # training accuracy per epoch (augmented data)
    eval_accuracy: list[float] = field(default_factory=list)  # per epoch, when an eval_loader is given
    seconds: list[float] = field(default_factory=list)  # training wall time per epoch


def lr_at(step: int, total_steps: int, peak: float, schedule: str) -> float:
    """Learning rate for optimizer step `step` of `total_steps`.

    onecycle: triangle 0 -> peak (half-way) -> 0, the reference's CyclicLR.
    cosine:   peak -> 0 along a half cosine.
    step:     peak, times 0.2 at 30 %, 60 % and 80 % of training (the reference's multistep).
    """
    t = min(step / total_steps, 1.0)  # a loader yielding more than len() batches gets the final LR
    if schedule == "onecycle":
        return peak * (1.0 - abs(2.0 * t - 1.0))
    if schedule == "cosine":
        return peak * 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "step":
        return peak * 0.2 ** sum(t >= m for m in (0.3, 0.6, 0.8))
    raise ValueError(f"unknown schedule {schedule!r}; expected one of {', '.join(SCHEDULES)}")


def _use_amp(amp: bool | Literal["auto"], device: torch.device) -> bool:
    return device.type == "cuda" if amp == "auto" else bool(amp)


def _data_generator(loader: Iterable[Any]) -> torch.Generator | None:
    gen = getattr(loader, "generator", None)
    return gen if isinstance(gen, torch.Generator) else None


def evaluate(
    model: nn.Module,
    transform: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: str | torch.device,
    *,
    amp: bool | Literal["auto"] = "auto",
) -> dict[str, Any]:
    """Accuracy, per-class accuracy (None for classes absent from the data) and mean loss of
    `model(transform(x))`. The model's train/eval mode is restored afterwards."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    hits = totals = None
    with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=_use_amp(amp, device)):
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
        raise ValueError("evaluate: the loader yielded no data")
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
    lr: float = 0.2,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    nesterov: bool = True,
    label_smoothing: float = 0.0,
    schedule: str = "onecycle",
    device: str | torch.device,
    amp: bool | Literal["auto"] = "auto",
    compile: bool = False,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    seed: int = 0,
    eval_loader: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train `model` on `model(transform(x))` and return it with per-epoch statistics.

    amp="auto" uses bf16 autocast on CUDA only. With `checkpoint_dir`, `last.pt` is rewritten
    atomically after every epoch (model, optimizer, step, RNG states, transform config and key
    fingerprint; never the key); `resume=True` continues from it (or starts fresh if absent),
    refusing a different key, transform or schedule. progress=False prints nothing; otherwise
    tqdm shows each epoch and `log` gets a one-line summary per epoch.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {', '.join(SCHEDULES)}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    try:
        steps_per_epoch = len(train_loader)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError("train_loader must have a len() (the LR schedule needs the number of steps)") from None
    if steps_per_epoch < 1:
        raise ValueError("train_loader is empty")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs a checkpoint_dir")
    say = log if progress else (lambda _: None)

    device = torch.device(device)
    use_amp = _use_amp(amp, device)
    channels_last = device.type == "cuda"  # faster convolutions on GPUs with tensor cores
    torch.manual_seed(seed)
    model.to(device)
    transform.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    net = torch.compile(model) if compile else model
    optimizer = torch.optim.SGD(
        model.parameters(), lr=0.0, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov
    )
    data_gen = _data_generator(train_loader)
    set_epoch = getattr(train_loader, "set_epoch", None)
    total_steps = epochs * steps_per_epoch
    settings = {
        "epochs": epochs, "lr": lr, "momentum": momentum, "weight_decay": weight_decay,
        "nesterov": nesterov, "label_smoothing": label_smoothing, "schedule": schedule,
        "steps_per_epoch": steps_per_epoch, "seed": seed, "data_seed": getattr(train_loader, "seed", None),
    }
    result = TrainResult(model)
    path = Path(checkpoint_dir, "last.pt") if checkpoint_dir is not None else None
    start_epoch = 0
    if resume and path is not None and path.exists():
        start_epoch = _restore(path, model, optimizer, transform, settings, result, device, data_gen)
        say(f"resuming from {path} after epoch {start_epoch}/{epochs}")

    for epoch in range(start_epoch, epochs):
        model.train()
        if set_epoch is not None:
            set_epoch(epoch)
        start = time.perf_counter()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        seen = 0
        bar = tqdm(train_loader, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{epochs}",
                   disable=not progress, leave=False)
        for i, (x, y) in enumerate(bar):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(epoch * steps_per_epoch + i, total_steps, lr, schedule)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.no_grad():  # the transform is fixed preprocessing: no gradients needed
                inputs = transform(x)
            if channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, torch.bfloat16, enabled=use_amp):
                logits = net(inputs)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            # Accumulate on the device: no host sync per step.
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
        bar.close()
        if seen == 0:
            raise ValueError("train_loader yielded no data")
        result.seconds.append(time.perf_counter() - start)
        result.loss.append(float(loss_sum) / seen)
        result.accuracy.append(int(correct) / seen)
        line = (f"epoch {epoch + 1}/{epochs}  loss {result.loss[-1]:.4f}  "
                f"train acc {result.accuracy[-1]:.2%}  {result.seconds[-1]:.1f}s")
        if eval_loader is not None:
            result.eval_accuracy.append(evaluate(net, transform, eval_loader, device, amp=amp)["accuracy"])
            line += f"  eval acc {result.eval_accuracy[-1]:.2%}"
        if path is not None:
            _save(path, model, optimizer, transform, settings, result, epoch + 1, device, data_gen)
        say(line)
    return result


def _save(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    transform: nn.Module,
    settings: dict[str, Any],
    result: TrainResult,
    epoch: int,
    device: torch.device,
    data_gen: torch.Generator | None,
) -> None:
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "version": 1,
        "epoch": epoch,  # epochs completed
        "step": epoch * settings["steps_per_epoch"],  # the LR schedule is a function of the step
        "settings": settings,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "history": {k: getattr(result, k) for k in ("loss", "accuracy", "eval_accuracy", "seconds")},
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "data": data_gen.get_state() if data_gen is not None else None,
        },
        "transform": transform.config(),
        "key_fingerprint": transform.fingerprint(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: torch.save(checkpoint, f))


def _restore(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    transform: nn.Module,
    settings: dict[str, Any],
    result: TrainResult,
    device: torch.device,
    data_gen: torch.Generator | None,
) -> int:
    """Load `path` into the live objects; returns the number of epochs already done."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a kpfast training checkpoint")
    expected, actual = checkpoint["key_fingerprint"], transform.fingerprint()
    if expected != actual:
        raise KeyMismatchError(
            f"cannot resume {path}: it was trained with key fingerprint {expected}, "
            f"but the transform's key has fingerprint {actual}"
        )
    if checkpoint["transform"] != transform.config():
        raise ValueError(
            f"cannot resume {path}: transform config changed from {checkpoint['transform']} to {transform.config()}"
        )
    changed = {k: (checkpoint["settings"].get(k), v) for k, v in settings.items() if checkpoint["settings"].get(k) != v}
    if changed:
        details = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
        raise ValueError(f"cannot resume {path}: training settings changed ({details})")
    if (checkpoint["rng"]["data"] is None) != (data_gen is None):
        raise ValueError(f"cannot resume {path}: the loader's generator was {'lost' if data_gen is None else 'added'}")

    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    for k, values in checkpoint["history"].items():
        setattr(result, k, list(values))
    torch.set_rng_state(checkpoint["rng"]["torch"])
    if checkpoint["rng"]["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(checkpoint["rng"]["cuda"], device)
    if data_gen is not None:
        data_gen.set_state(checkpoint["rng"]["data"])
    return int(checkpoint["epoch"])
