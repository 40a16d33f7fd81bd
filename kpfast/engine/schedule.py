"""Learning-rate schedules as a function of the optimizer step, and as a stateful torch scheduler
(so the schedule resumes with the rest of a run's state)."""
from __future__ import annotations

import math

import torch

from ..errors import ConfigError

SCHEDULES = ("onecycle", "cosine", "step")


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
    raise ConfigError(f"unknown schedule {schedule!r}; expected one of {', '.join(SCHEDULES)}")


def scheduler(optimizer: torch.optim.Optimizer, total_steps: int, schedule: str) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR that gives step s the `schedule`'s LR, with the optimizer's lr as the peak; call
    its ``step()`` after every ``optimizer.step()``."""
    lr_at(0, total_steps, 1.0, schedule)  # an unknown schedule fails here, not at the first step
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, total_steps, 1.0, schedule))
