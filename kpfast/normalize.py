"""Key-free input transform: 8-bit (or [0,1] float) images -> per-channel normalised floats.

This is what a plain (unprotected) model is served with, and what an attacker without the key
feeds a protected model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ._moved import moved
from .errors import ConfigError, DataError

# The statistics of each data set live in kpfast.data.stats.
__getattr__ = moved(__name__, {f"{name}_{stat.upper()}": f"kpfast.data.stats:{name}.{stat}"
                               for name in ("CIFAR10", "IMAGENET") for stat in ("mean", "std")})


def to_unit_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 in [0,1] (divided, not multiplied by 1/255, to match ToTensor bit for bit);
    floating input is taken as already in [0,1]."""
    if x.dtype == torch.uint8:
        return x.float() / 255
    if not x.is_floating_point():
        raise TypeError(f"expected uint8 or floating images, got {x.dtype}")
    return x


class Normalize(nn.Module):
    """`(x/255 - mean) / std` for uint8 input, `(x - mean) / std` for float input in [0,1].

    mean/std hold one value per channel (or a single value for all channels). They are
    non-persistent buffers: they follow `.to(device)` but stay out of any state_dict.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or len(mean) == 0:
            raise ConfigError(f"mean and std need the same non-zero length, got {len(mean)} and {len(std)}")
        if any(s <= 0 for s in std):
            raise ConfigError(f"std must be positive, got {list(std)}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise DataError(f"expected images [B,C,H,W], got shape {tuple(x.shape)}")
        n = self.mean.shape[1]
        if n != 1 and x.shape[1] != n:
            raise DataError(f"Normalize has {n} channel statistics but the images have {x.shape[1]} channels")
        x = to_unit_float(x)
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def config(self) -> dict[str, Any]:
        return {"type": "normalize", "mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist()}

    def fingerprint(self) -> None:
        """Key-free: there is no key to identify."""
        return None

    @classmethod
    def from_config(cls, config: dict[str, Any], keys: Any = None) -> Normalize:
        """Rebuild from `config()`; `keys` is accepted for a uniform interface and ignored."""
        return cls(config["mean"], config["std"])

    def extra_repr(self) -> str:
        c = self.config()
        return f"mean={c['mean']}, std={c['std']}"
