"""The mixed-precision policy of every kpfast training and evaluation loop, in one place:
``amp="auto"`` means bf16 autocast on CUDA and full precision elsewhere (bf16 needs no loss
scaling; CPU autocast is slower than float32 for these models)."""
from __future__ import annotations

from typing import Literal, Union

import torch

Amp = Union[bool, Literal["auto"]]


def amp_enabled(amp: Amp, device: torch.device) -> bool:
    return device.type == "cuda" if amp == "auto" else bool(amp)


def autocast(device: torch.device, amp: Amp = "auto") -> torch.autocast:
    """The autocast context of `amp` on `device` (a no-op context when off)."""
    return torch.autocast(device.type, torch.bfloat16, enabled=amp_enabled(amp, device))
