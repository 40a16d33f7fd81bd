"""A compiled transform chain as an ``nn.Module``: the stage tensors of one or many keys, held as
non-persistent buffers (they follow ``.to(device)`` but never enter a ``state_dict``)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from . import ops
from .keys import KeySet
from .plan import AffineStage, LutStage, Step, compile_steps


class _KeyCall(nn.Module):
    """One op call. Its key tensors follow the module's device, but keep their dtype under
    ``.half()`` / ``.to(torch.float64)``: casting the tables would change the transform."""

    def _apply(self, fn, recurse=True):
        for name, buffer in self._buffers.items():
            self._buffers[name] = buffer.to(fn(buffer.new_empty(0)).device)
        return self


class _AffineCall(_KeyCall):
    def __init__(self, stages: list[AffineStage], block_size: int):
        super().__init__()
        self.block_size = block_size
        self.register_buffer("src", torch.stack([s.src for s in stages]), persistent=False)
        self.register_buffer("params", torch.stack([s.params for s in stages]), persistent=False)

    def forward(self, x: torch.Tensor, key_index: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        return ops.block_affine(x, self.src, self.params, self.block_size, key_index)


class _LutCall(_KeyCall):
    def __init__(self, stages: list[LutStage], block_size: int, straight_through: bool):
        super().__init__()
        self.block_size = block_size
        self.scale = stages[0].scale
        self.rounding = stages[0].rounding
        self.straight_through = straight_through
        # Few distinct tables serve all positions of all keys: store each once.
        tables = [torch.unique(s.table, dim=0, return_inverse=True) for s in stages]
        offsets = torch.tensor([0] + [t.shape[0] for t, _ in tables]).cumsum(0)
        all_tables = torch.cat([t for t, _ in tables])
        ids = torch.stack([i + offsets[k] for k, (_, i) in enumerate(tables)])
        unique, inverse = torch.unique(all_tables, dim=0, return_inverse=True)
        self.register_buffer("src", torch.stack([s.src for s in stages]), persistent=False)
        self.register_buffer("table_id", inverse[ids], persistent=False)
        self.register_buffer("tables", unique, persistent=False)

    def forward(self, x: torch.Tensor, key_index: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        out_dtype = dtype if x.dtype == torch.uint8 else x.dtype
        if self.straight_through and x.requires_grad:
            return self._straight_through(x, key_index, out_dtype)
        return ops.block_lut(x, self.src, self.table_id, self.tables.to(out_dtype), self.block_size,
                            self.scale, self.rounding, key_index)

    def _straight_through(self, x, key_index, out_dtype):
        # BPDA: the forward value of the table, the gradient of the bare gather.
        out = self(x.detach(), key_index, out_dtype)
        identity = torch.zeros(self.src.shape[0], 4, self.src.shape[1], dtype=torch.float64, device=x.device)
        identity[:, ops.SCALE] = 1
        identity[:, ops.DIV] = 1
        moved = ops.block_affine(x, self.src, identity, self.block_size, key_index)
        return out + (moved - moved.detach()).to(out.dtype)


class CompiledChain(nn.Module):
    """Applies the chain given as per-key step lists (same structure for every key)."""

    def __init__(self, keys: Sequence[KeySet], steps: Sequence[list[Step]], integer_input: bool,
                 straight_through: bool = False):
        super().__init__()
        L, M = keys[0].num_positions, keys[0].block_size
        per_key = [compile_steps(s, L, integer_input) for s in steps]
        calls = []
        for i in range(len(per_key[0])):
            stages = [stages[i] for stages in per_key]
            if isinstance(stages[0], LutStage):
                calls.append(_LutCall(stages, M, straight_through))
            else:
                calls.append(_AffineCall(stages, M))
        self.calls = nn.ModuleList(calls)

    def forward(self, x: torch.Tensor, key_index: torch.Tensor | None = None,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
        for call in self.calls:
            x = call(x, key_index, dtype)
        return x
