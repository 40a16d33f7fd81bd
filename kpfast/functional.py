"""Functional forms of the block transforms: ``block_transform``, ``shuffle``, ``negpos``, ``ffx``.

Each takes key sets or a compiled :class:`~kpfast.program.Program` (from :func:`kpfast.plan.compile`
or :meth:`kpfast.BlockTransform.program`) and never builds a module. With key sets, the Program is
compiled on first use and kept in a small cache of the ``PROGRAM_CACHE_SIZE`` most recent
(keys, chain, options, device) combinations, so a call in a loop costs what the module's forward
costs. Like a module, the cache holds key material in memory only.

With a Program, the chain and its options are the ones it was compiled with: passing ``ops``,
``mean``, ``std``, ``dtype`` or ``rounding`` as well, or using it for the other direction or input
kind, is an error. Inside ``torch.compile(fullgraph=True)`` pass a Program (or use a module): the
cache lookup for key sets is not traceable.

Example::

    y = kpfast.functional.ffx(images, keys)                      # compiled once, then cached
    program = kpfast.plan.compile(keys, ("shuffle",), integer_input=True)
    y = kpfast.functional.shuffle(images, program)               # no lookup at all
"""
from __future__ import annotations

import functools
from typing import Sequence

import torch

from . import plan
from .errors import ConfigError
from .keys import KeySet
from .plan import KeysLike, as_key_list, check_options
from .program import Program, check_images, warn_if_out_of_range

__all__ = ["block_transform", "shuffle", "negpos", "ffx", "PROGRAM_CACHE_SIZE"]

PROGRAM_CACHE_SIZE = 64

KeysOrProgram = KeysLike | Program


@functools.lru_cache(maxsize=PROGRAM_CACHE_SIZE)
def _cached_program(keys: tuple[KeySet, ...], ops: tuple[str, ...], inverse: bool, integer_input: bool,
                    mean: tuple[float, ...] | None, std: tuple[float, ...] | None, dtype: torch.dtype,
                    rounding: str, device: torch.device) -> Program:
    return plan.compile(keys, ops, inverse=inverse, integer_input=integer_input, mean=mean, std=std,
                        dtype=dtype, rounding=rounding).to(device)


def _given_program(program: Program, x: torch.Tensor, ops: Sequence[str] | None, inverse: bool,
                   options: dict[str, object]) -> Program:
    if ops is not None and tuple(ops) != program.ops:
        raise ConfigError(f"the program computes {program.ops}, not {tuple(ops)}")
    given = [name for name, value in options.items() if value is not None]
    if given:
        raise ConfigError(f"{', '.join(given)} are fixed when a Program is compiled; pass key sets to choose them")
    if inverse != program.inverse:
        raise ConfigError(f"the program was compiled with inverse={program.inverse}")
    if (x.dtype == torch.uint8) != program.integer_input:
        raise ConfigError(f"the program was compiled for {'uint8' if program.integer_input else 'float'} images, "
                         f"got {x.dtype}; compile one with integer_input={x.dtype == torch.uint8}")
    return program


def block_transform(x: torch.Tensor, keys: KeysOrProgram, ops: Sequence[str] | None = None, *,
                    mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                    dtype: torch.dtype | None = None, rounding: str | None = None, inverse: bool = False,
                    straight_through: bool = False, key_index: torch.Tensor | None = None) -> torch.Tensor:
    """Apply (or undo, with ``inverse``) the chain ``ops``; see :class:`kpfast.BlockTransform`.

    ``ops``, ``dtype`` and ``rounding`` default to all three transforms, float32 and ``"floor"``
    for key sets, and to what a given Program was compiled with.
    """
    single = isinstance(x, torch.Tensor) and x.dim() == 3
    if single:
        x = x.unsqueeze(0)
    if isinstance(keys, Program):
        check_images(x, block_size=keys.block_size, channels=keys.channels, num_keys=keys.num_keys,
                     device=keys.device, key_index=key_index, owner="program")
        program = _given_program(keys, x, ops, inverse, dict(mean=mean, std=std, dtype=dtype, rounding=rounding))
    else:
        key_list = as_key_list(keys)
        first = key_list[0]
        dtype, rounding = dtype or torch.float32, rounding or "floor"
        ops, (mean, std) = check_options(plan.TRANSFORMS if ops is None else ops, first.channels, mean=mean,
                                         std=std, dtype=dtype, rounding=rounding)
        check_images(x, block_size=first.block_size, channels=first.channels, num_keys=len(key_list),
                     device=None, key_index=key_index)  # the program is compiled for x's device
        program = _cached_program(tuple(key_list), ops, inverse, x.dtype == torch.uint8, mean, std, dtype,
                                  rounding, x.device)
    if not inverse:
        warn_if_out_of_range(x)
    out = program(x, key_index, straight_through=straight_through)
    return out.squeeze(0) if single else out


def shuffle(x: torch.Tensor, keys: KeysOrProgram, *, inverse: bool = False,
            key_index: torch.Tensor | None = None) -> torch.Tensor:
    """Block-wise pixel shuffling (``out[l] = in[perm[l]]``); see :class:`kpfast.Shuffle`."""
    return block_transform(x, keys, ("shuffle",), inverse=inverse, key_index=key_index)


def negpos(x: torch.Tensor, keys: KeysOrProgram, *, inverse: bool = False,
           key_index: torch.Tensor | None = None) -> torch.Tensor:
    """Negative/positive transform (``1 - x`` at the key's positions); see :class:`kpfast.NegPos`."""
    return block_transform(x, keys, ("negpos",), inverse=inverse, key_index=key_index)


def ffx(x: torch.Tensor, keys: KeysOrProgram, *, inverse: bool = False, rounding: str | None = None,
        straight_through: bool = False, key_index: torch.Tensor | None = None) -> torch.Tensor:
    """FFX encryption of the pixel values at the key's positions; see :class:`kpfast.FFX`."""
    return block_transform(x, keys, ("ffx",), rounding=rounding, inverse=inverse,
                           straight_through=straight_through, key_index=key_index)
