"""Functional forms of the block transforms. Each call compiles the key into op arguments; for
repeated use (a data pipeline, a training loop) build the ``nn.Module`` once instead."""
from __future__ import annotations

from typing import Sequence

import torch

from .plan import TRANSFORMS
from .transforms import BlockTransform, KeysLike


def block_transform(x: torch.Tensor, keys: KeysLike, ops: Sequence[str] = TRANSFORMS, *,
                    mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                    dtype: torch.dtype = torch.float32, rounding: str = "floor", inverse: bool = False,
                    straight_through: bool = False, key_index: torch.Tensor | None = None) -> torch.Tensor:
    """Apply (or undo, with ``inverse``) the chain ``ops``; see :class:`kpfast.BlockTransform`."""
    t = BlockTransform(keys, ops, mean, std, dtype, rounding, straight_through).to(x.device)
    return t.inverse(x, key_index) if inverse else t(x, key_index)


def shuffle(x: torch.Tensor, keys: KeysLike, *, inverse: bool = False, key_index: torch.Tensor | None = None) -> torch.Tensor:
    return block_transform(x, keys, ("shuffle",), inverse=inverse, key_index=key_index)


def negpos(x: torch.Tensor, keys: KeysLike, *, inverse: bool = False, key_index: torch.Tensor | None = None) -> torch.Tensor:
    return block_transform(x, keys, ("negpos",), inverse=inverse, key_index=key_index)


def ffx(x: torch.Tensor, keys: KeysLike, *, inverse: bool = False, rounding: str = "floor",
        straight_through: bool = False, key_index: torch.Tensor | None = None) -> torch.Tensor:
    return block_transform(x, keys, ("ffx",), rounding=rounding, inverse=inverse,
                           straight_through=straight_through, key_index=key_index)
