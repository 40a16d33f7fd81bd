"""Compile a chain of block transforms into the arguments of the two kpfast ops.

Every transform is "gather, then a function of the value at each position" on the block vector of
``L = M*M*C`` positions (semantics.md §5), so any chain is ``out[l] = f_l(x[src[l]])``:

* integer input (uint8): ``f_l`` is a 256-entry table. It is obtained by running the reference
  float32 arithmetic of every step on a ``[256, L]`` batch whose row ``v`` holds ``v / 255``
  everywhere, so the fused result equals the step-by-step reference bit for bit.
* float input: shuffle and NP compose into one affine map per position (exact: the reference
  computes ``1 - x`` and copies); from the first quantising step (FFX) on, the rest of the chain
  is again one table, over the quantisation levels.

Normalize(mean, std) of the destination channel is the last step of every forward chain and the
first (inverted) step of every inverse chain.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .keys import KeySet
from .ops import BIAS, DIV, SCALE, SUB

TRANSFORMS = ("shuffle", "negpos", "ffx")
ROUNDINGS = ("floor", "nearest")


# ---------------------------------------------------------------------------------------------
# Elementary steps on block vectors y of shape [R, L] (float32), with the reference arithmetic.

@dataclass(frozen=True)
class Gather:
    """y[:, l] = x[:, index[l]]: the shuffle (index = perm) and its inverse (argsort(perm))."""
    index: torch.Tensor

    def apply(self, y: torch.Tensor) -> torch.Tensor:
        return y[:, self.index]


@dataclass(frozen=True)
class Negate:
    """NP: 1 - x at the masked positions; self-inverse."""
    mask: torch.Tensor

    def apply(self, y: torch.Tensor) -> torch.Tensor:
        return torch.where(self.mask, 1 - y, y)


@dataclass(frozen=True)
class ScaleShift:
    """y = x * scale + shift per position (the inverse of Normalize)."""
    scale: torch.Tensor
    shift: torch.Tensor

    def apply(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.scale + self.shift


@dataclass(frozen=True)
class Normalize:
    """y = (x - mean) / std per position, as torchvision's Normalize (subtract, then divide)."""
    mean: torch.Tensor
    std: torch.Tensor

    def apply(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.mean) / self.std


@dataclass(frozen=True)
class Quantize:
    """A step that reads its input as an integer level: ``level = round(x * scale)`` clamped to
    ``[0, levels)``, then ``y = table[level, l]``. FFX and its inverse are such steps."""
    scale: float
    rounding: str
    table: torch.Tensor  # [levels, L] float32: the step's output for every level and position

    @property
    def levels(self) -> int:
        return self.table.shape[0]

    def level_of(self, y: torch.Tensor) -> torch.Tensor:
        t = y * self.scale
        t = torch.floor(t) if self.rounding == "floor" else torch.round(t)
        return t.nan_to_num(0.0).clamp(0, self.levels - 1).long()

    def apply(self, y: torch.Tensor) -> torch.Tensor:
        return self.table.gather(0, self.level_of(y))


Step = Gather | Negate | ScaleShift | Normalize | Quantize


def ffx_step(keys: KeySet, rounding: str) -> Quantize:
    """FFX: q = floor(255 * clamp(x, 0, 1)); v = lut[q] where masked else q; out = v / max(lut)."""
    q = torch.arange(256).unsqueeze(1)
    v = torch.where(keys.ffx_mask, keys.ffx_lut[q], q)
    return Quantize(255.0, rounding, v.float() / keys.ffx_max)


def ffx_inverse_step(keys: KeySet) -> Quantize:
    """Inverse FFX: q = round(x * max(lut)) (the reference floors and decrypts 5 of 256 values
    wrongly); p = lut^-1[q] where masked else q; out = p / 255. Codes that no byte encrypts to
    decrypt to 0; unmasked codes above 255 to 255."""
    q = torch.arange(keys.ffx_max + 1).unsqueeze(1)
    p = torch.where(keys.ffx_mask, keys.ffx_inverse_lut[q].clamp(min=0), q.clamp(max=255))
    return Quantize(float(keys.ffx_max), "nearest", p.float() / 255)


def chain_steps(keys: KeySet, ops: Sequence[str], *, inverse: bool = False, rounding: str = "floor",
                mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> list[Step]:
    """The elementary steps of ``ops`` in the order they are applied (reversed and inverted when
    ``inverse``), with Normalize last (or its inverse first)."""
    steps: list[Step] = []
    for name in ops:
        if name == "shuffle":
            steps.append(Gather(torch.argsort(keys.perm) if inverse else keys.perm))
        elif name == "negpos":
            steps.append(Negate(keys.np_mask))
        elif name == "ffx":
            steps.append(ffx_inverse_step(keys) if inverse else ffx_step(keys, rounding))
        else:
            raise ValueError(f"unknown transform {name!r}; expected one of {TRANSFORMS}")
    if mean is not None:
        channel = torch.arange(keys.num_positions) % keys.channels
        m = torch.tensor(mean, dtype=torch.float32)[channel]
        s = torch.tensor(std, dtype=torch.float32)[channel]
        if inverse:
            return [ScaleShift(s, m)] + steps[::-1]
        steps.append(Normalize(m, s))
    return steps[::-1] if inverse else steps


# ---------------------------------------------------------------------------------------------
# Stages: what one op call computes, for one key.

@dataclass
class AffineStage:
    src: torch.Tensor     # [L] int64
    params: torch.Tensor  # [4, L] float64: scale, bias, sub, div


@dataclass
class LutStage:
    src: torch.Tensor     # [L] int64
    table: torch.Tensor   # [L, V] float32: per-position value of every level
    scale: float          # quantisation scale of float input (unused for uint8)
    rounding: str


Stage = AffineStage | LutStage


def _identity_affine(L: int) -> AffineStage:
    params = torch.zeros(4, L, dtype=torch.float64)
    params[SCALE] = 1
    params[DIV] = 1
    return AffineStage(torch.arange(L), params)


def _lut_stage(steps: list[Step], y: torch.Tensor, src: torch.Tensor, scale: float,
               rounding: str) -> LutStage:
    # Run the rest of the chain on the table of levels, tracking where each position reads from.
    for step in steps:
        if isinstance(step, Gather):
            src = src[step.index]
        y = step.apply(y)
    return LutStage(src, y.t().contiguous(), scale, rounding)


def compile_steps(steps: list[Step], L: int, integer_input: bool) -> list[Stage]:
    """Group steps into as few op calls as keep the result bit-identical to applying them one by
    one. ``integer_input``: uint8 images, a single table stage."""
    if integer_input:
        levels = torch.arange(256, dtype=torch.float32).unsqueeze(1).expand(256, L) / 255
        return [_lut_stage(steps, levels, torch.arange(L), 1.0, "floor")]
    stages: list[Stage] = []
    current = _identity_affine(L)
    pure_gather = True  # the current affine stage only moves values so far
    for i, step in enumerate(steps):
        p = current.params
        if isinstance(step, Gather):
            current = AffineStage(current.src[step.index], p[:, step.index])
        elif isinstance(step, Quantize):
            if not pure_gather:
                stages.append(current)
                current = _identity_affine(L)
            # The table stage reads through the gathers so far and continues from the step's
            # output for every level at every position.
            stages.append(_lut_stage(steps[i + 1:], step.table, current.src, step.scale, step.rounding))
            return stages
        else:
            if not pure_gather and not isinstance(step, Normalize):
                # A second value change in one stage would round differently from the reference.
                stages.append(current)
                current = _identity_affine(L)
                p = current.params
            p = p.clone()
            if isinstance(step, Negate):
                p[SCALE] = torch.where(step.mask, -1.0, 1.0).double()
                p[BIAS] = torch.where(step.mask, 1.0, 0.0).double()
            elif isinstance(step, ScaleShift):
                p[SCALE] = step.scale.double()
                p[BIAS] = step.shift.double()
            else:  # Normalize: the kernel subtracts and divides after the value change
                p[SUB] = step.mean.double()
                p[DIV] = step.std.double()
            current = AffineStage(current.src, p)
            pure_gather = False
    stages.append(current)
    return stages
