"""The reference-style peer of the benchmarks: the reference algorithm in plain batched torch.
Segment the images into block vectors, index them, integrate the blocks back, then Normalize
(docs/semantics.md §4, the formulation of the authors' code). Kept simple on purpose: every step
is a full pass over float32 memory. Not part of the kpfast package: only the benchmarks (and
the test that checks it against the numpy reference) use it."""
from __future__ import annotations

from typing import Sequence

import torch

from kpfast.keys import KeySet


def reference_transform(x: torch.Tensor, keys: KeySet, ops: Sequence[str] = ("shuffle", "negpos", "ffx"),
                        mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> torch.Tensor:
    if x.dtype == torch.uint8:
        x = x.float() / 255  # ToTensor
    N, C, H, W = x.shape
    M, L = keys.block_size, keys.num_positions
    dev = x.device
    b = x.reshape(N, C, H // M, M, W // M, M).permute(0, 2, 4, 3, 5, 1).reshape(N, H // M, W // M, L)
    for op in ops:
        if op == "shuffle":
            b = b[..., keys.perm.to(dev)]
        elif op == "negpos":
            b = torch.where(keys.np_mask.to(dev), 1 - b, b)
        elif op == "ffx":
            q = torch.floor(255 * b.clamp(0, 1)).long()
            v = torch.where(keys.ffx_mask.to(dev), keys.ffx_lut.to(dev)[q], q)
            b = v.float() / keys.ffx_max
        else:
            raise ValueError(f"unknown transform {op!r}")
    out = b.reshape(N, H // M, W // M, M, M, C).permute(0, 5, 1, 3, 2, 4).reshape(N, C, H, W)
    if mean is not None:
        out = (out - torch.tensor(mean, device=dev).view(1, C, 1, 1)) / torch.tensor(std, device=dev).view(1, C, 1, 1)
    return out
