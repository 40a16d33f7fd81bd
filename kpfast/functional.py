"""Functional forms of the block transforms: ``block_transform``, ``shuffle``, ``negpos``, ``ffx``,
``scramble``.

Each takes key sets or a compiled :class:`~kpfast.program.Program` (from :func:`kpfast.plan.compile`
or :meth:`kpfast.BlockTransform.program`) and never builds a module. With key sets, the Program is
compiled on first use and kept in a small cache of the ``PROGRAM_CACHE_SIZE`` most recent
(keys, chain, options, device) combinations, so a call in a loop costs what the module's forward
costs. Like a module, the cache holds key material in memory only.

With a Program, the chain and its options are the ones it was compiled with: passing ``ops``,
``mean``, ``std``, ``dtype`` or ``rounding`` as well, or using it for the other direction or input
kind, is an error. Inside ``torch.compile(fullgraph=True)`` pass a Program (or use a module): the
cache lookup for key sets is not traceable.

Example:
    >>> keys = kpfast.KeySet.generate(block_size=4)
    >>> images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    >>> y = kpfast.functional.ffx(images, keys)                   # compiled once, then cached
    >>> program = kpfast.plan.compile(keys, ("shuffle",), integer_input=True)
    >>> z = kpfast.functional.shuffle(images, program)            # no lookup at all
    >>> torch.equal(z, kpfast.functional.shuffle(images, keys))
    True
"""
from __future__ import annotations

import functools
from typing import Sequence

import torch

from . import plan
from .errors import ConfigError
from .keys import KeySet
from .plan import KeysLike, as_key_list, check_grid, check_options, scramble_grid
from .program import Program, check_images, warn_if_out_of_range

__all__ = ["block_transform", "shuffle", "negpos", "ffx", "scramble", "PROGRAM_CACHE_SIZE"]

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
    r"""Apply (or undo, with ``inverse``) the chain ``ops`` of block transforms under a key set.

    The function form of :class:`kpfast.BlockTransform`. Each image is cut into
    :math:`M \times M` blocks and every block is read as the vector of its :math:`L = M^2 C`
    values, position :math:`l = ((y \bmod M)\,M + (x \bmod M))\,C + c`; a uint8 pixel :math:`p`
    is the value :math:`p / 255`. The transforms of ``ops`` act on that vector, the same way in
    every block, in the order given, and Normalize follows when ``mean`` and ``std`` are given:

    .. math::

        \text{shuffle:}\quad y_l = x_{\pi(l)} \qquad\qquad
        \text{negpos:}\quad y_l = \begin{cases} 1 - x_l & l \in N \\ x_l & l \notin N \end{cases}

        \text{ffx:}\quad q_l = \lfloor 255\, x_l \rfloor \ (\text{or } \operatorname{round}),
        \qquad y_l = \frac{1}{\max t} \begin{cases} t(q_l) & l \in F \\ q_l & l \notin F \end{cases}

    with the key set's permutation :math:`\pi` (``perm``), negative/positive positions :math:`N`
    (``np_mask``), FFX positions :math:`F` (``ffx_mask``) and FFX table :math:`t` (``ffx_lut``);
    ``"scramble"`` moves whole blocks (output block :math:`b` is input block
    :math:`\sigma(b)`, ``block_perm``). ``docs/semantics.md`` specifies every step exactly.

    Args:
        x: images, uint8 or float in [0, 1].
        keys: a :class:`~kpfast.keys.KeySet`, a sequence of key sets (each image takes the one
            ``key_index`` names), or a :class:`~kpfast.program.Program` compiled for this chain.
        ops: the transforms in the order applied: any of ``"shuffle"``, ``"negpos"``, ``"ffx"``
            and ``"scramble"`` (default, for key sets: the three in-block transforms).
        mean: per-channel Normalize mean, folded into the same pass (with ``std``).
        std: per-channel Normalize standard deviation.
        dtype: output dtype for uint8 input: ``torch.float32`` (default), ``float16``,
            ``bfloat16`` or ``float64``; float input keeps its dtype.
        rounding: how FFX quantises its input: ``"floor"`` (default; the reference's, bit for
            bit) or ``"nearest"`` (exact round trips after float arithmetic such as NP).
        inverse: undo the chain, Normalize included: returns float images in [0, 1].
        straight_through: give FFX the gradient of the pixel movement alone (for attacks); FFX
            is otherwise not differentiable.
        key_index: int64 ``[N]``, which of several key sets each image uses (many keys, one
            launch).

    Returns:
        The transformed images, of ``x``'s shape and memory format.

    Shape:
        - Input: :math:`(N, C, H, W)` or :math:`(C, H, W)`, with :math:`H` and :math:`W`
          multiples of the block size :math:`M`.
        - Output: :math:`(N, C, H, W)` or :math:`(C, H, W)`, as the input.

    Example:
        >>> keys = kpfast.KeySet.generate(block_size=4)
        >>> x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
        >>> y = kpfast.functional.block_transform(x, keys, ("shuffle", "negpos", "ffx"), rounding="nearest")
        >>> y.shape, y.dtype
        (torch.Size([8, 3, 32, 32]), torch.float32)
        >>> back = kpfast.functional.block_transform(y, keys, ("shuffle", "negpos", "ffx"), rounding="nearest",
        ...                                          inverse=True)
        >>> torch.equal(torch.round(back * 255).to(torch.uint8), x)
        True
    """
    single = isinstance(x, torch.Tensor) and x.dim() == 3
    if single:
        x = x.unsqueeze(0)
    if isinstance(keys, Program):
        check_images(x, block_size=keys.block_size, channels=keys.channels, num_keys=keys.num_keys,
                     device=keys.device, key_index=key_index, owner="program")
        program = _given_program(keys, x, ops, inverse, dict(mean=mean, std=std, dtype=dtype, rounding=rounding))
        _check_block_count(x, program)
    else:
        key_list = as_key_list(keys)
        first = key_list[0]
        dtype, rounding = dtype or torch.float32, rounding or "floor"
        ops, (mean, std) = check_options(plan.IN_BLOCK_TRANSFORMS if ops is None else ops, first.channels, mean=mean,
                                         std=std, dtype=dtype, rounding=rounding)
        check_images(x, block_size=first.block_size, channels=first.channels, num_keys=len(key_list),
                     device=None, key_index=key_index)  # the program is compiled for x's device
        check_grid(x, scramble_grid(key_list, ops), first.block_size)
        program = _cached_program(tuple(key_list), ops, inverse, x.dtype == torch.uint8, mean, std, dtype,
                                  rounding, x.device)
    if not inverse:
        warn_if_out_of_range(x)
    out = program(x, key_index, straight_through=straight_through)
    return out.squeeze(0) if single else out


def _check_block_count(x: torch.Tensor, program: Program) -> None:
    # A Program knows how many block locations its scrambling key has, not the grid's shape.
    block_src = getattr(program.launches[0], "block_src", None)
    blocks = (x.shape[-2] // program.block_size) * (x.shape[-1] // program.block_size)
    if block_src is not None and block_src.shape[1] != blocks:
        raise ConfigError(f"the program scrambles {block_src.shape[1]} block locations, but images of "
                          f"{x.shape[-2]}x{x.shape[-1]} pixels have {blocks} blocks of {program.block_size}x"
                          f"{program.block_size}")


def shuffle(x: torch.Tensor, keys: KeysOrProgram, *, inverse: bool = False,
            key_index: torch.Tensor | None = None) -> torch.Tensor:
    r"""Block-wise pixel shuffling: every block's values permuted by the key's ``perm``.

    .. math::

        y_l = x_{\pi(l)}, \qquad \text{inverse: } x_{\pi(l)} = y_l

    Values are only moved: exact for uint8 and float input, and differentiable. The function form
    of :class:`kpfast.Shuffle`; see :func:`block_transform` for the block layout.

    Args:
        x: images, uint8 or float in [0, 1].
        keys: a :class:`~kpfast.keys.KeySet`, a sequence of them (with ``key_index``), or a
            :class:`~kpfast.program.Program` compiled for ``("shuffle",)``.
        inverse: undo the shuffle.
        key_index: int64 ``[N]``, which key set each image uses.

    Returns:
        Shuffled images: float32 for uint8 input, else ``x``'s dtype.

    Shape:
        - Input: :math:`(N, C, H, W)` or :math:`(C, H, W)`, :math:`H, W` multiples of :math:`M`.
        - Output: as the input.

    Example:
        >>> keys = kpfast.KeySet.generate(block_size=2, channels=1)
        >>> x = torch.arange(4.0).reshape(1, 1, 2, 2) / 255
        >>> y = kpfast.functional.shuffle(x, keys)
        >>> torch.equal(y.flatten(), x.flatten()[keys.perm])
        True
        >>> torch.equal(kpfast.functional.shuffle(y, keys, inverse=True), x)
        True
    """
    return block_transform(x, keys, ("shuffle",), inverse=inverse, key_index=key_index)


def negpos(x: torch.Tensor, keys: KeysOrProgram, *, inverse: bool = False,
           key_index: torch.Tensor | None = None) -> torch.Tensor:
    r"""Negative/positive transform: ``1 - x`` (the byte ``255 - p``) at the key's positions.

    .. math::

        y_l = \begin{cases} 1 - x_l & \text{if } l \in N \ (\texttt{np\_mask}[l]) \\
                            x_l & \text{otherwise} \end{cases}

    Its own inverse, and differentiable. The function form of :class:`kpfast.NegPos`; see
    :func:`block_transform` for the block layout.

    Args:
        x: images, uint8 or float in [0, 1].
        keys: a :class:`~kpfast.keys.KeySet`, a sequence of them (with ``key_index``), or a
            :class:`~kpfast.program.Program` compiled for ``("negpos",)``.
        inverse: undo the transform (the same function).
        key_index: int64 ``[N]``, which key set each image uses.

    Returns:
        The transformed images: float32 for uint8 input, else ``x``'s dtype.

    Shape:
        - Input: :math:`(N, C, H, W)` or :math:`(C, H, W)`, :math:`H, W` multiples of :math:`M`.
        - Output: as the input.

    Example:
        >>> keys = kpfast.KeySet.generate(block_size=4)
        >>> x = torch.rand(2, 3, 8, 8)
        >>> y = kpfast.functional.negpos(x, keys)
        >>> flipped = keys.np_mask.view(4, 4, 3).permute(2, 0, 1).repeat(1, 2, 2)  # l = (row * M + col) * C + c
        >>> torch.allclose(y, torch.where(flipped, 1 - x, x))
        True
    """
    return block_transform(x, keys, ("negpos",), inverse=inverse, key_index=key_index)


def ffx(x: torch.Tensor, keys: KeysOrProgram, *, inverse: bool = False, rounding: str | None = None,
        straight_through: bool = False, key_index: torch.Tensor | None = None) -> torch.Tensor:
    r"""FFX format-preserving encryption of the pixel values at the key's positions.

    Every value is quantised to its level :math:`q` (0..255), encrypted through the key's table
    :math:`t` (``ffx_lut``, from the FFX cipher under the key's password) where ``ffx_mask`` is
    set, and divided by the largest code, so that the output lies in [0, 1]:

    .. math::

        q_l = \lfloor 255\, x_l \rfloor \ (\text{or } \operatorname{round}(255\, x_l)), \qquad
        y_l = \frac{1}{\max t} \begin{cases} t(q_l) & \text{if } l \in F \\ q_l & \text{otherwise} \end{cases}

    The inverse rounds :math:`y_l \max t` to a code and looks it up in :math:`t^{-1}`. FFX is a
    table lookup with no useful gradient (``straight_through`` for attacks). The function form of
    :class:`kpfast.FFX`; see :func:`block_transform` for the block layout.

    Args:
        x: images, uint8 or float in [0, 1].
        keys: a :class:`~kpfast.keys.KeySet`, a sequence of them (with ``key_index``), or a
            :class:`~kpfast.program.Program` compiled for ``("ffx",)``.
        inverse: decrypt.
        rounding: quantisation of float input: ``"floor"`` (default, the reference) or
            ``"nearest"`` (right for values a float rounding step off the k/255 lattice).
        straight_through: backpropagate as if FFX were the identity (BPDA).
        key_index: int64 ``[N]``, which key set each image uses.

    Returns:
        Encrypted images: float32 for uint8 input, else ``x``'s dtype.

    Shape:
        - Input: :math:`(N, C, H, W)` or :math:`(C, H, W)`, :math:`H, W` multiples of :math:`M`.
        - Output: as the input.

    Example:
        >>> keys = kpfast.KeySet.generate(block_size=4)
        >>> x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
        >>> y = kpfast.functional.ffx(x, keys)
        >>> codes = torch.round(y * keys.ffx_max).long()                # integers 0..max(ffx_lut)
        >>> mask = keys.ffx_mask.view(4, 4, 3).permute(2, 0, 1).repeat(1, 2, 2)
        >>> torch.equal(codes, torch.where(mask, keys.ffx_lut[x.long()], x.long()))
        True
        >>> torch.equal(torch.round(kpfast.functional.ffx(y, keys, inverse=True) * 255).to(torch.uint8), x)
        True
    """
    return block_transform(x, keys, ("ffx",), rounding=rounding, inverse=inverse,
                           straight_through=straight_through, key_index=key_index)


def scramble(x: torch.Tensor, keys: KeysOrProgram, *, inverse: bool = False,
             key_index: torch.Tensor | None = None) -> torch.Tensor:
    r"""Block scrambling: whole blocks moved to other places of the image, each left as it is.

    An :math:`H \times W` image has a grid of :math:`R \times Q = (H/M) \times (W/M)` blocks,
    numbered row by row; with the key's permutation :math:`\sigma` (``block_perm``, made for
    that grid: ``KeySet.generate(M, C, grid=(R, Q))``),

    .. math::

        \text{out block } b = \text{in block } \sigma(b), \qquad
        \text{inverse: out block } \sigma(b) = \text{in block } b

    Exact for uint8 and float input, and differentiable. The function form of
    :class:`kpfast.Scramble`.

    Args:
        x: images, uint8 or float in [0, 1], of the key's grid.
        keys: a :class:`~kpfast.keys.KeySet` with a block-scrambling key, a sequence of them
            (with ``key_index``), or a :class:`~kpfast.program.Program` compiled for
            ``("scramble",)``.
        inverse: put the blocks back.
        key_index: int64 ``[N]``, which key set each image uses.

    Returns:
        The scrambled images: float32 for uint8 input, else ``x``'s dtype.

    Shape:
        - Input: :math:`(N, C, R M, Q M)` or :math:`(C, R M, Q M)` for a key of grid
          :math:`(R, Q)`.
        - Output: as the input.

    Example:
        >>> keys = kpfast.KeySet.generate(4, channels=3, grid=(2, 2))
        >>> x = torch.rand(1, 3, 8, 8)
        >>> y = kpfast.functional.scramble(x, keys)
        >>> blocks = lambda im: im.unfold(2, 4, 4).unfold(3, 4, 4).reshape(1, 3, 4, 4, 4)  # [.., b, i, j]
        >>> torch.equal(blocks(y), blocks(x)[:, :, keys.block_perm])
        True
    """
    return block_transform(x, keys, ("scramble",), inverse=inverse, key_index=key_index)
