"""Compile a chain of block transforms for one or many key sets into a :class:`~kpfast.program.Program`.

Every transform is "gather, then a function of the value at each position" on the block vector of
``L = M*M*C`` positions (docs/semantics.md §5), so any chain is ``out[l] = f_l(x[src[l]])``:

* integer input (uint8): ``f_l`` is a 256-entry table. It is obtained by running the reference
  float32 arithmetic of every step on a ``[256, L]`` batch whose row ``v`` holds ``v / 255``
  everywhere, so the fused result equals the step-by-step reference bit for bit.
* float input: shuffle and NP compose into one affine map per position (exact: the reference
  computes ``1 - x`` and copies); from the first quantising step (FFX) on, the rest of the chain
  is again one table, over the quantisation levels.

Normalize(mean, std) of the destination channel is the last step of every forward chain and the
first (inverted) step of every inverse chain.

Block scrambling moves whole blocks: output block ``b`` is input block ``block_src[b]``. It
commutes with every in-block step (they apply the same function to every block), so wherever it
stands in a chain it is one more gather, over the block locations, in the first launch of the
program (``Launch.block_src``): a chain with scrambling takes the launches it takes without.

:func:`compile` is pure: key sets and options in, a Program out. The K key sets are compiled
together: every step works on tensors with a leading key dimension (elementwise float32
arithmetic, so each key's result is bit-identical to compiling it alone), and the tables of all
keys and positions are deduplicated in one place (:func:`_lut_launch`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import torch

from .errors import ConfigError, DataError
from .keys import KeySet
from .ops import BIAS, DIV, SCALE, SUB
from .program import AffineLaunch, Launch, LutLaunch, Program, identity_params

# compile is left out of __all__: a star import would shadow the builtin.
__all__ = ["TRANSFORMS", "IN_BLOCK_TRANSFORMS", "ROUNDINGS", "OUTPUT_DTYPES", "check_options", "as_key_list",
           "scramble_grid", "check_grid"]

# The transforms within each block (the papers' chain, and the default one), and every transform.
IN_BLOCK_TRANSFORMS = ("shuffle", "negpos", "ffx")
TRANSFORMS = (*IN_BLOCK_TRANSFORMS, "scramble")
ROUNDINGS = ("floor", "nearest")
OUTPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

KeysLike = KeySet | Sequence[KeySet]
Normalization = tuple[tuple[float, ...], tuple[float, ...]] | tuple[None, None]

# Keys compiled at once: their [K, levels, L] step tensors stay within 2**24 elements (64 MB).
_CHUNK_ELEMENTS = 1 << 24


# ---------------------------------------------------------------------------------------------
# Options, checked in one place (the modules check them at construction, compile at every call).

def as_key_list(keys: KeysLike) -> list[KeySet]:
    """A non-empty list of key sets of one geometry."""
    key_list = [keys] if isinstance(keys, KeySet) else list(keys) if isinstance(keys, Sequence) else None
    if not key_list or not all(isinstance(k, KeySet) for k in key_list):
        raise TypeError("keys must be a KeySet or a non-empty sequence of KeySets")
    first = key_list[0]
    for k in key_list[1:]:
        if (k.block_size, k.channels) != (first.block_size, first.channels):
            raise ConfigError("all key sets must have the same block size and channel count, got "
                             f"{(first.block_size, first.channels)} and {(k.block_size, k.channels)}")
    return key_list


def check_options(ops: Sequence[str], channels: int, *, mean: Sequence[float] | None = None,
                  std: Sequence[float] | None = None, dtype: torch.dtype = torch.float32,
                  rounding: str = "floor") -> tuple[tuple[str, ...], Normalization]:
    """Validate the chain options; returns ``ops`` and ``(mean, std)`` as tuples (or ``(None, None)``)."""
    if isinstance(ops, str):
        raise TypeError(f"ops must be a sequence of transform names, got the string {ops!r}")
    ops = tuple(ops)
    for name in ops:
        if name not in TRANSFORMS:
            raise ConfigError(f"unknown transform {name!r}; expected some of {TRANSFORMS}")
    if rounding not in ROUNDINGS:
        raise ConfigError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    if dtype not in OUTPUT_DTYPES:
        raise ConfigError(f"dtype must be one of {OUTPUT_DTYPES}, got {dtype}")
    if mean is None and std is None:
        return ops, (None, None)
    if mean is None or std is None:
        raise ConfigError("give both mean and std for Normalize, or neither")
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if len(mean) != channels or len(std) != channels:
        raise ConfigError(f"mean and std need {channels} values (one per channel), got {len(mean)} and {len(std)}")
    if any(not s > 0 for s in std):
        raise ConfigError(f"std must be positive, got {std}")
    return ops, (mean, std)


def scramble_grid(keys: Sequence[KeySet], ops: Sequence[str]) -> tuple[int, int] | None:
    """The grid of blocks that the chain's block-scrambling keys are for; None for a chain without
    ``"scramble"``. Raises ConfigError when a key has none, or the keys' grids differ."""
    if "scramble" not in ops:
        return None
    grids = {k.grid for k in keys}
    if None in grids:
        raise ConfigError("the chain scrambles blocks but the key has no block-scrambling key; make one for "
                          "images of H x W pixels with KeySet.generate(M, C, grid=(H // M, W // M))")
    if len(grids) > 1:
        raise ConfigError(f"the key sets' block-scrambling keys are for different grids: {sorted(grids)}")
    return grids.pop()


def check_grid(x: torch.Tensor, grid: tuple[int, int] | None, block_size: int) -> None:
    """A clear error for NCHW images (divisible by the block size) that are not cut into the grid of
    blocks a block-scrambling key was made for (None: nothing to check)."""
    if grid is None:
        return
    H, W = x.shape[-2:]
    rows, columns = H // block_size, W // block_size
    if (rows, columns) != tuple(grid):
        raise DataError(f"images of {H}x{W} pixels make a {rows}x{columns} grid of {block_size}x{block_size} "
                        f"blocks, but the block-scrambling key was made for a {grid[0]}x{grid[1]} grid "
                        f"({grid[0] * block_size}x{grid[1] * block_size} images)")


def block_gather(keys: Sequence[KeySet], ops: Sequence[str], inverse: bool) -> torch.Tensor | None:
    """int64 [K, B]: the block each output block reads, for the chain's scrambles composed (every
    one uses the key's ``block_perm``), or their inverse; None without ``"scramble"``."""
    if scramble_grid(keys, ops) is None:
        return None
    block_perm = torch.stack([k.block_perm for k in keys])
    src = torch.arange(block_perm.shape[1]).repeat(len(keys), 1)
    for _ in range(list(ops).count("scramble")):
        src = src.gather(1, block_perm)
    return torch.argsort(src, dim=1) if inverse else src


def inverse_scale(keys: Sequence[KeySet], ops: Sequence[str]) -> float | None:
    """The quantisation scale ``max(ffx_lut)`` inverse FFX uses, shared by all keys; None when the
    chain has no FFX. Raises ConfigError (a ValueError) when the keys' maxima differ (one scale per launch)."""
    if "ffx" not in ops:
        return None
    maxima = {k.ffx_max for k in keys}
    if len(maxima) > 1:
        raise ConfigError("these key sets have FFX tables of different maxima and cannot be inverted "
                         "in one call; invert with one BlockTransform per key set")
    return float(maxima.pop())


# ---------------------------------------------------------------------------------------------
# Elementary steps on block vectors y of shape [K, R, L] (float32), with the reference arithmetic.

@dataclass(frozen=True)
class Gather:
    """y[k, :, l] = x[k, :, index[k, l]]: the shuffle (index = perm) and its inverse (argsort)."""
    index: torch.Tensor  # int64 [K, L]

    def apply(self, y: torch.Tensor) -> torch.Tensor:
        return y.gather(2, self.index.unsqueeze(1).expand(y.shape))


@dataclass(frozen=True)
class Negate:
    """NP: 1 - x at the masked positions; self-inverse."""
    mask: torch.Tensor  # bool [K, L]

    def apply(self, y: torch.Tensor) -> torch.Tensor:
        return torch.where(self.mask.unsqueeze(1), 1 - y, y)


@dataclass(frozen=True)
class ScaleShift:
    """y = x * scale + shift per position (the inverse of Normalize)."""
    scale: torch.Tensor  # float32 [L]
    shift: torch.Tensor

    def apply(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.scale + self.shift


@dataclass(frozen=True)
class Normalize:
    """y = (x - mean) / std per position, as torchvision's Normalize (subtract, then divide)."""
    mean: torch.Tensor  # float32 [L]
    std: torch.Tensor

    def apply(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.mean) / self.std


@dataclass(frozen=True)
class Quantize:
    """A step that reads its input as an integer level: ``level = round(x * scale)`` clamped to
    ``[0, levels)``, then ``y = table[k, level, l]``. FFX and its inverse are such steps."""
    scale: float
    rounding: str
    table: torch.Tensor  # [K, levels, L] float32: the step's output for every level and position

    @property
    def levels(self) -> int:
        return self.table.shape[1]

    def level_of(self, y: torch.Tensor) -> torch.Tensor:
        t = y * self.scale
        t = torch.floor(t) if self.rounding == "floor" else torch.round(t)
        return t.nan_to_num(0.0).clamp(0, self.levels - 1).long()

    def apply(self, y: torch.Tensor) -> torch.Tensor:
        return self.table.gather(1, self.level_of(y))


Step = Gather | Negate | ScaleShift | Normalize | Quantize


def ffx_step(keys: Sequence[KeySet], rounding: str) -> Quantize:
    """FFX: q = floor(255 * clamp(x, 0, 1)); v = lut[q] where masked else q; out = v / max(lut)."""
    mask = torch.stack([k.ffx_mask for k in keys]).unsqueeze(1)           # [K, 1, L]
    lut = torch.stack([k.ffx_lut for k in keys]).unsqueeze(2)             # [K, 256, 1]
    scale = torch.tensor([k.ffx_max for k in keys], dtype=torch.float32).view(-1, 1, 1)
    q = torch.arange(256).view(1, 256, 1)
    return Quantize(255.0, rounding, torch.where(mask, lut, q).float() / scale)


def ffx_inverse_step(keys: Sequence[KeySet], scale: float) -> Quantize:
    """Inverse FFX: q = round(x * max(lut)) (the reference floors and decrypts 5 of 256 values
    wrongly); p = lut^-1[q] where masked else q; out = p / 255. Codes that no byte encrypts to
    decrypt to 0; unmasked codes above 255 to 255. All keys share ``scale`` = max(lut)."""
    mask = torch.stack([k.ffx_mask for k in keys]).unsqueeze(1)
    inverse = torch.stack([k.ffx_inverse_lut for k in keys]).clamp(min=0).unsqueeze(2)
    q = torch.arange(int(scale) + 1).view(1, -1, 1)
    return Quantize(scale, "nearest", torch.where(mask, inverse, q.clamp(max=255)).float() / 255)


def chain_steps(keys: Sequence[KeySet], ops: Sequence[str], *, inverse: bool = False, rounding: str = "floor",
                mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> list[Step]:
    """The elementary steps of ``ops`` for the stacked ``keys`` in the order they are applied
    (reversed and inverted when ``inverse``), with Normalize last (or its inverse first)."""
    steps: list[Step] = []
    for name in ops:
        if name == "scramble":
            continue  # moves whole blocks: no step within a block (see block_gather)
        if name == "shuffle":
            perm = torch.stack([k.perm for k in keys])
            steps.append(Gather(torch.argsort(perm, dim=1) if inverse else perm))
        elif name == "negpos":
            steps.append(Negate(torch.stack([k.np_mask for k in keys])))
        elif name == "ffx":
            steps.append(ffx_inverse_step(keys, inverse_scale(keys, ops)) if inverse else ffx_step(keys, rounding))
        else:
            raise ConfigError(f"unknown transform {name!r}; expected one of {TRANSFORMS}")
    if mean is not None:
        first = keys[0]
        channel = torch.arange(first.num_positions) % first.channels
        m = torch.tensor(mean, dtype=torch.float32)[channel]
        s = torch.tensor(std, dtype=torch.float32)[channel]
        if inverse:
            return [ScaleShift(s, m)] + steps[::-1]
        steps.append(Normalize(m, s))
    return steps[::-1] if inverse else steps


# ---------------------------------------------------------------------------------------------
# Stages: what one op launch computes, for the K keys (before the tables are deduplicated).

@dataclass
class AffineStage:
    src: torch.Tensor     # [K, L] int64
    params: torch.Tensor  # [K, 4, L] float64: scale, bias, sub, div


@dataclass
class LutStage:
    src: torch.Tensor     # [K, L] int64
    table: torch.Tensor   # [K, L, V] float32: per-position value of every level
    scale: float          # quantisation scale of float input (unused for uint8)
    rounding: str


Stage = AffineStage | LutStage


def _lut_stage(steps: list[Step], y: torch.Tensor, src: torch.Tensor, scale: float, rounding: str) -> LutStage:
    # Run the rest of the chain on the table of levels, tracking where each position reads from.
    for step in steps:
        if isinstance(step, Gather):
            src = src.gather(1, step.index)
        y = step.apply(y)
    return LutStage(src, y.transpose(1, 2).contiguous(), scale, rounding)


def compile_steps(steps: list[Step], K: int, L: int, integer_input: bool) -> list[Stage]:
    """Group steps into as few op launches as keep the result bit-identical to applying them one
    by one. ``integer_input``: uint8 images, a single table stage."""
    src = torch.arange(L).repeat(K, 1)  # the identity gather
    if integer_input:
        levels = torch.arange(256, dtype=torch.float32).view(1, 256, 1).expand(K, 256, L) / 255
        return [_lut_stage(steps, levels, src, 1.0, "floor")]
    stages: list[Stage] = []
    current = AffineStage(src, identity_params(K, L))
    pure_gather = True  # the current affine stage only moves values so far
    for i, step in enumerate(steps):
        p = current.params
        if isinstance(step, Gather):
            current = AffineStage(current.src.gather(1, step.index), p.gather(2, step.index.unsqueeze(1).expand(p.shape)))
        elif isinstance(step, Quantize):
            if not pure_gather:
                stages.append(current)
                current = AffineStage(src, identity_params(K, L))
            # The table stage reads through the gathers so far and continues from the step's
            # output for every level at every position.
            stages.append(_lut_stage(steps[i + 1:], step.table, current.src, step.scale, step.rounding))
            return stages
        else:
            if not pure_gather and not isinstance(step, Normalize):
                # A second value change in one stage would round differently from the reference.
                stages.append(current)
                current = AffineStage(src, identity_params(K, L))
                p = current.params
            p = p.clone()
            if isinstance(step, Negate):
                p[:, SCALE] = torch.where(step.mask, -1.0, 1.0).double()
                p[:, BIAS] = torch.where(step.mask, 1.0, 0.0).double()
            elif isinstance(step, ScaleShift):
                p[:, SCALE] = step.scale.double()
                p[:, BIAS] = step.shift.double()
            else:  # Normalize: the kernel subtracts and divides after the value change
                p[:, SUB] = step.mean.double()
                p[:, DIV] = step.std.double()
            current = AffineStage(current.src, p)
            pure_gather = False
    stages.append(current)
    return stages


# ---------------------------------------------------------------------------------------------
# The compiler.

def _lut_launch(stages: list[LutStage], dtype: torch.dtype) -> LutLaunch:
    """One table launch from the same stage of every key chunk: few distinct tables serve all
    positions of all keys, so each is stored once (deduplicated per chunk, then across chunks)."""
    per_chunk = [torch.unique(s.table.flatten(0, 1), dim=0, return_inverse=True) for s in stages]
    offsets = torch.tensor([0] + [t.shape[0] for t, _ in per_chunk]).cumsum(0)
    tables, ids = torch.unique(torch.cat([t for t, _ in per_chunk]), dim=0, return_inverse=True)
    table_id = torch.cat([ids[inverse + offsets[c]].view(s.src.shape)
                          for c, ((_, inverse), s) in enumerate(zip(per_chunk, stages))])
    first = stages[0]
    return LutLaunch(torch.cat([s.src for s in stages]), table_id, tables.to(dtype), first.scale, first.rounding)


@torch.inference_mode(False)  # programs outlive the call: never inference tensors (autograd saves them)
def compile(keys: KeysLike, ops: Sequence[str] = IN_BLOCK_TRANSFORMS, *, inverse: bool = False, integer_input: bool,
            mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
            dtype: torch.dtype = torch.float32, rounding: str = "floor") -> Program:
    """The Program that applies ``ops`` (or undoes them, with ``inverse``) with each of ``keys``.

    Args:
        keys: a KeySet, or a sequence of K key sets of one geometry (``key_index`` picks one per
            image when the program runs).
        ops: the transforms in the order they are applied (any of :data:`TRANSFORMS`; ``"scramble"``
            needs keys with a block-scrambling key, all for one grid).
        inverse: compile the inverse chain (Normalize undone first, the ops in reverse order).
        integer_input: for uint8 images (one table launch) or for float images.
        mean, std: Normalize of the destination channel, folded in.
        dtype: the output dtype for uint8 input (float input keeps its dtype).
        rounding: how forward FFX quantises float input (:data:`ROUNDINGS`).

    Returns a Program on the CPU (``.to(device)`` moves it). Only the parts of the keys that
    ``ops`` use are read: a chain without FFX never derives an FFX table.
    """
    key_list = as_key_list(keys)
    first = key_list[0]
    ops, (mean, std) = check_options(ops, first.channels, mean=mean, std=std, dtype=dtype, rounding=rounding)
    block_src = block_gather(key_list, ops, inverse)
    K, L = len(key_list), first.num_positions
    levels = 256 if not inverse or "ffx" not in ops else int(inverse_scale(key_list, ops)) + 1
    chunk = max(1, _CHUNK_ELEMENTS // (levels * L))
    per_chunk = []
    for start in range(0, K, chunk):
        part = key_list[start:start + chunk]
        steps = chain_steps(part, ops, inverse=inverse, rounding=rounding, mean=mean, std=std)
        per_chunk.append(compile_steps(steps, len(part), L, integer_input))
    launches: list[Launch] = []
    for stages in zip(*per_chunk):  # every chunk has the same stage structure
        if isinstance(stages[0], LutStage):
            launches.append(_lut_launch(list(stages), dtype if integer_input else torch.float32))
        else:
            launches.append(AffineLaunch(torch.cat([s.src for s in stages]), torch.cat([s.params for s in stages])))
    if block_src is not None:  # blocks move in the first launch; the others work within blocks
        launches[0] = dataclasses.replace(launches[0], block_src=block_src)
    return Program(ops, inverse, integer_input, dtype, first.block_size, first.channels, K, tuple(launches))
