"""The block transforms as ``nn.Module``s (kornia / torchvision.transforms.v2 style).

Every transform takes NCHW (or CHW) uint8 images or float images in [0, 1] and has ``forward``
and ``inverse``. uint8 input takes the fused table path (one read, one write per element) and
gives ``dtype`` output; float input keeps its dtype.

A module holds its key sets and up to four compiled programs (:class:`~kpfast.program.Program`:
forward and inverse, for uint8 and float input), each built by :func:`kpfast.plan.compile` on
first use: a transform that only protects images never compiles an inverse chain. The programs
follow ``.to(device)`` (never the dtype) and never appear in a ``state_dict``; they are plain
attributes rather than buffers, because a ``torch.compile`` trace cannot see buffers registered
while it runs. Building on first use stays ``torch.compile(fullgraph=True)``-clean (see
:func:`_ensure_program`).

Keys never leave by accident: pickling a transform (``pickle.dumps``, ``torch.save(t)``, or of a
model that holds it) raises :class:`~kpfast.keys.KeyPicklingError`, except while multiprocessing
starts a worker process (``DataLoader`` workers with the spawn or forkserver start method; with
fork nothing is pickled). ``copy.copy`` and ``copy.deepcopy`` work in memory and share the
immutable keys and programs. A graph exported with ``torch.export`` holds the programs as
constants: like the key file, it is key material.

Float input outside [0, 1] by more than half a quantisation level (e.g. 0..255 floats that were
not divided by 255) makes ``forward`` warn once per transform. The check reads the images, so it
runs only on CPU tensors outside ``torch.compile``: on an accelerator it would wait for the device
in every step, and a traced graph has no values to look at.
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils._python_dispatch import _disable_current_modes

from . import plan
from .errors import ConfigError
from .keys import KeySet, refuse_pickling
from .plan import (IN_BLOCK_TRANSFORMS, OUTPUT_DTYPES, ROUNDINGS, TRANSFORMS, KeysLike, as_key_list,  # noqa: F401
                   check_grid, check_options, scramble_grid)
from .program import Program, check_images, check_output, warn_if_out_of_range

__all__ = ["BlockTransform", "Shuffle", "NegPos", "FFX", "Scramble", "KeysLike", "OUTPUT_DTYPES"]


def _slot(inverse: bool, integer_input: bool) -> str:
    return f"{'inverse' if inverse else 'forward'}_{'uint8' if integer_input else 'float'}"


_SLOTS = tuple(_slot(i, u) for i in (False, True) for u in (True, False))


class _Programs:
    """A transform's compiled programs by slot name, None until first use. A plain object rather
    than a dict: a trace reads each slot fresh after :func:`_ensure_program` has filled it."""

    def __init__(self, **programs: Program | None):
        for name in _SLOTS:
            setattr(self, name, programs.get(name))

    def to(self, device: torch.device) -> _Programs:
        return _Programs(**{name: p.to(device) for name in _SLOTS if (p := getattr(self, name)) is not None})


def _ensure_program(transform: BlockTransform, inverse: bool, integer_input: bool) -> bool:
    """Compile the transform's program for (``inverse``, ``integer_input``) if it has none yet.

    Marked as returning a constant (it always returns True), so under ``torch.compile`` dynamo
    runs it eagerly while tracing instead of putting it in the graph: the build (data-dependent
    ``torch.unique``, FFX tables) never enters the graph, and the trace then reads the built
    program from its slot. In eager mode it is an ordinary call. Non-strict ``torch.export``
    traces with fake tensors instead: the build leaves those modes, so it works on real key data.
    """
    name = _slot(inverse, integer_input)
    if getattr(transform._programs, name) is None:
        with _disable_current_modes():
            program = plan.compile(transform._keys, transform.ops, inverse=inverse, integer_input=integer_input,
                                   mean=transform.mean, std=transform.std, dtype=transform.dtype,
                                   rounding=transform.rounding).to(transform._device)
        setattr(transform._programs, name, program)
    return True


# What torch.compiler.assume_constant_result(_ensure_program) does, without importing torch._dynamo
# (about 1.5 s) at `import kpfast`; tests/test_transforms.py checks that the two still agree.
_ensure_program._dynamo_marked_constant = True  # type: ignore[attr-defined]


class BlockTransform(nn.Module):
    r"""A chain of block transforms under one key set (or one of several, per image).

    Each image is cut into :math:`M \times M` blocks and every block is read as the vector of
    its :math:`L = M^2 C` values (position :math:`l = ((y \bmod M)\,M + (x \bmod M))\,C + c`;
    a uint8 pixel :math:`p` is the value :math:`p / 255`). The transforms of ``ops`` act on that
    vector, the same way in every block, in the order given, then Normalize
    :math:`(y - \mu_c) / \sigma_c` when ``mean`` and ``std`` are given; all of it in one pass:

    .. math::

        \text{shuffle: } y_l = x_{\pi(l)}, \qquad
        \text{negpos: } y_l = 1 - x_l \ (l \in N), \qquad
        \text{ffx: } y_l = t(q_l) / \max t \ (l \in F), \ q_l = \lfloor 255\, x_l \rfloor

    with the key set's permutation :math:`\pi`, negative/positive positions :math:`N`, FFX
    positions :math:`F` and FFX table :math:`t` (unmasked FFX positions give
    :math:`q_l / \max t`). ``inverse`` undoes the whole chain. ``docs/semantics.md`` specifies
    every step; :func:`kpfast.functional.block_transform` is the same as a function.

    Args:
        keys: a :class:`KeySet`, or a sequence of key sets; with several, ``forward`` takes a
            ``key_index`` tensor saying which key set each image uses (many keys, one launch).
        ops: the transforms in the order they are applied: any of ``"shuffle"``, ``"negpos"``,
            ``"ffx"`` (within every block) and ``"scramble"`` (the block locations: needs keys
            with a block-scrambling key, and images of the grid it was made for).
        mean, std: Normalize of the destination channel, folded into the same pass.
        dtype: output dtype for uint8 input.
        rounding: how FFX quantises float input: ``"floor"`` (the reference) or ``"nearest"``
            (right for images that went through normalize/denormalize).
        straight_through: give FFX a straight-through gradient (the gradient of the pixel
            shuffle alone), for attacks; FFX is otherwise not differentiable.

    Shape:
        - Input: :math:`(N, C, H, W)` or :math:`(C, H, W)`, uint8 or float in [0, 1], with
          :math:`H` and :math:`W` multiples of the block size :math:`M` (with ``"scramble"``:
          :math:`(H / M, W / M)` is the key's ``grid``).
        - Output: as the input; ``dtype`` for uint8 input, else the input's dtype.

    Example:
        >>> keys = kpfast.KeySet.generate(block_size=4)
        >>> t = kpfast.BlockTransform(keys, ("shuffle", "negpos", "ffx"), rounding="nearest")
        >>> images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
        >>> y = t(images)                                     # protected, float32
        >>> y.dtype, tuple(y.shape)
        (torch.float32, (16, 3, 32, 32))
        >>> torch.equal(torch.round(t.inverse(y) * 255).to(torch.uint8), images)   # exact with "nearest"
        True
        >>> several = kpfast.BlockTransform(kpfast.KeySet.generate_many(4, block_size=4))
        >>> z = several(images, key_index=torch.arange(16) % 4)   # image i under key set i % 4, one launch
    """

    def __init__(self, keys: KeysLike, ops: Sequence[str] = IN_BLOCK_TRANSFORMS, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, dtype: torch.dtype = torch.float32,
                 rounding: str = "floor", straight_through: bool = False):
        super().__init__()
        key_list = as_key_list(keys)
        first = key_list[0]
        self.ops, (self.mean, self.std) = check_options(ops, first.channels, mean=mean, std=std, dtype=dtype,
                                                        rounding=rounding)
        self.dtype, self.rounding, self.straight_through = dtype, rounding, bool(straight_through)
        self.block_size, self.channels, self.num_keys = first.block_size, first.channels, len(key_list)
        self.grid = scramble_grid(key_list, self.ops)  # None: the chain does not scramble blocks
        self._keys: tuple[KeySet, ...] = tuple(key_list)
        self._device = torch.device("cpu")
        self._programs = _Programs()
        self._range_warned = False

    def forward(self, x: torch.Tensor, key_index: torch.Tensor | None = None, *,
                out: torch.Tensor | None = None) -> torch.Tensor:
        """Protect images: uint8 or float in [0, 1], NCHW or CHW.

        ``out``: write the result into this buffer (the images' shape, the output dtype, on their
        device; any layout, pinned memory included) and return it. It records no gradient."""
        return self._run(x, key_index, inverse=False, out=out)

    def inverse(self, y: torch.Tensor, key_index: torch.Tensor | None = None, *,
                out: torch.Tensor | None = None) -> torch.Tensor:
        """Undo ``forward`` (Normalize included): returns float images in [0, 1] (``out`` as in
        :meth:`forward`).

        With FFX, inverting several key sets in one call needs one ``ffx_max`` (ConfigError otherwise)."""
        return self._run(y, key_index, inverse=True, out=out)

    def program(self, *, inverse: bool = False, integer_input: bool = True) -> Program:
        """The compiled program this transform runs for that direction and input kind (built now
        if it was not used yet), on the transform's device; e.g. for ``kpfast.functional``."""
        _ensure_program(self, inverse, integer_input)
        return getattr(self._programs, _slot(inverse, integer_input))

    def _run(self, x: torch.Tensor, key_index: torch.Tensor | None, inverse: bool,
             out: torch.Tensor | None = None) -> torch.Tensor:
        images = x
        single = isinstance(x, torch.Tensor) and x.dim() == 3
        if single:
            x = x.unsqueeze(0)
        check_images(x, block_size=self.block_size, channels=self.channels, num_keys=self.num_keys,
                     device=self._device, key_index=key_index)
        check_grid(x, self.grid, self.block_size)
        if not torch.compiler.is_compiling() and not inverse and not self._range_warned:
            self._range_warned = warn_if_out_of_range(x)
        program = self.program(inverse=inverse, integer_input=x.dtype == torch.uint8)
        if out is not None:
            check_output(out, images, program.output_dtype(x))
        target = out.unsqueeze(0) if single and out is not None else out
        result = program(x, key_index, straight_through=self.straight_through, out=target)
        if out is not None:
            return out
        return result.squeeze(0) if single else result

    def _apply(self, fn, recurse=True):
        # Programs follow the device (never the dtype: casting the tables would change the transform).
        try:
            device = fn(torch.empty(0, device=self._device)).device
        except NotImplementedError:  # leaving "meta": nothing to copy, the keys rebuild the programs
            device = fn(torch.empty(0)).device
        if device != self._device:
            programs = _Programs() if self._device.type == "meta" else self._programs.to(device)
            self._device, self._programs = device, programs
        return super()._apply(fn, recurse)

    # --- keys never leave by accident (see the module docs) ---------------------------------

    def __getstate__(self) -> dict[str, Any]:
        refuse_pickling(f"a {type(self).__name__}")
        state = super().__getstate__()
        state["_programs"] = _Programs()  # a worker compiles what it uses
        return state

    def __copy__(self) -> BlockTransform:
        clone = type(self).__new__(type(self))
        clone.__dict__.update(self.__dict__)
        return clone

    def __deepcopy__(self, memo: dict) -> BlockTransform:
        clone = type(self).__new__(type(self))
        memo[id(self)] = clone
        clone.__dict__.update(copy.deepcopy(nn.Module.__getstate__(self), memo))
        return clone

    # --- identity and configuration -------------------------------------------------------

    def fingerprint(self) -> str:
        """The key's fingerprint (of all keys, joined, when there are several); never the key."""
        return "+".join(k.fingerprint() for k in self._keys)

    def config(self) -> dict[str, Any]:
        """Everything but the key, to rebuild the transform with :meth:`from_config` (a chain that
        scrambles blocks also records the key's grid)."""
        config = {"type": "block", "ops": list(self.ops), "block_size": self.block_size,
                  "channels": self.channels, "mean": self.mean, "std": self.std,
                  "dtype": str(self.dtype).removeprefix("torch."), "rounding": self.rounding,
                  "straight_through": self.straight_through}
        if self.grid is not None:  # only then: the configs (and digests) of other chains stay as they were
            config["grid"] = list(self.grid)
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any], keys: KeysLike) -> BlockTransform:
        key_list = as_key_list(keys)
        k = key_list[0]
        if (k.block_size, k.channels) != (config["block_size"], config["channels"]):
            raise ConfigError(f"the key is for {k.block_size}x{k.block_size} blocks with {k.channels} channels, "
                             f"the transform for {config['block_size']}x{config['block_size']} with "
                             f"{config['channels']}")
        if "grid" in config and k.grid is not None and list(k.grid) != list(config["grid"]):
            raise ConfigError(f"the key scrambles a {k.grid[0]}x{k.grid[1]} grid of blocks, the transform a "
                             f"{config['grid'][0]}x{config['grid'][1]} grid")
        # Configs written before straight_through was recorded had none.
        return cls(key_list, config["ops"], config["mean"], config["std"], getattr(torch, config["dtype"]),
                   config["rounding"], config.get("straight_through", False))

    def __repr__(self) -> str:  # the compiled programs are an implementation detail
        return f"{type(self).__name__}({self.extra_repr()})"

    def extra_repr(self) -> str:
        norm = "" if self.mean is None else f", mean={self.mean}, std={self.std}"
        grid = "" if self.grid is None else f", grid={self.grid}"
        return (f"ops={self.ops}, block_size={self.block_size}, channels={self.channels}{grid}{norm}, "
                f"dtype={self.dtype}, keys={self.fingerprint()}")


class Shuffle(BlockTransform):
    r"""Block-wise pixel shuffling: :math:`y_l = x_{\pi(l)}` in every block (``perm``).

    Values are only moved: exact, and differentiable (the gradient is the inverse gather).

    Args:
        keys: a :class:`~kpfast.keys.KeySet`, or several (``forward(x, key_index)``).
        dtype: output dtype for uint8 input (default float32).

    Shape:
        - Input: :math:`(N, C, H, W)` or :math:`(C, H, W)`, :math:`H, W` multiples of :math:`M`.
        - Output: as the input.

    Example:
        >>> keys = kpfast.KeySet.generate(block_size=4)
        >>> x = torch.rand(2, 3, 8, 8)
        >>> shuffle = kpfast.Shuffle(keys)
        >>> torch.equal(shuffle.inverse(shuffle(x)), x)
        True
    """

    def __init__(self, keys: KeysLike, dtype: torch.dtype = torch.float32):
        super().__init__(keys, ("shuffle",), dtype=dtype)


class NegPos(BlockTransform):
    r"""Negative/positive transform: :math:`y_l = 1 - x_l` (the byte :math:`255 - p`) where
    ``np_mask[l]`` is set, else :math:`y_l = x_l`. Its own inverse, and differentiable.

    Args:
        keys: a :class:`~kpfast.keys.KeySet`, or several (``forward(x, key_index)``).
        dtype: output dtype for uint8 input (default float32).

    Shape:
        - Input: :math:`(N, C, H, W)` or :math:`(C, H, W)`, :math:`H, W` multiples of :math:`M`.
        - Output: as the input.

    Example:
        >>> keys = kpfast.KeySet.generate(block_size=4)
        >>> images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
        >>> y = kpfast.NegPos(keys)(images)
        >>> flipped = keys.np_mask.view(4, 4, 3).permute(2, 0, 1).repeat(1, 2, 2)  # l = (row * M + col) * C + c
        >>> torch.equal(torch.round(y * 255).to(torch.uint8), torch.where(flipped, 255 - images, images))
        True
    """

    def __init__(self, keys: KeysLike, dtype: torch.dtype = torch.float32):
        super().__init__(keys, ("negpos",), dtype=dtype)


class FFX(BlockTransform):
    r"""Format-preserving (FFX) encryption of the pixel values at the key's positions.

    .. math::

        q_l = \lfloor 255\, x_l \rfloor \ (\text{or } \operatorname{round}), \qquad
        y_l = \frac{1}{\max t} \begin{cases} t(q_l) & \text{if } \texttt{ffx\_mask}[l] \\
                                             q_l & \text{otherwise} \end{cases}

    with the key's table :math:`t` (``ffx_lut``: the FFX cipher of every byte under the key's
    password). The inverse rounds to a code and looks it up in :math:`t^{-1}`.

    Args:
        keys: a :class:`~kpfast.keys.KeySet`, or several (``forward(x, key_index)``).
        rounding: quantisation of float input: ``"floor"`` (default, the reference's) or
            ``"nearest"`` (for values a float rounding step off the k/255 lattice).
        dtype: output dtype for uint8 input (default float32).
        straight_through: backpropagate as if FFX were the identity (BPDA, for attacks).

    Shape:
        - Input: :math:`(N, C, H, W)` or :math:`(C, H, W)`, :math:`H, W` multiples of :math:`M`.
        - Output: as the input.

    Example:
        >>> keys = kpfast.KeySet.generate(block_size=4)
        >>> images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
        >>> ffx = kpfast.FFX(keys)
        >>> y = ffx(images)                                   # codes / max(ffx_lut), in [0, 1]
        >>> torch.equal(torch.round(ffx.inverse(y) * 255).to(torch.uint8), images)
        True
    """

    def __init__(self, keys: KeysLike, rounding: str = "floor", dtype: torch.dtype = torch.float32,
                 straight_through: bool = False):
        super().__init__(keys, ("ffx",), dtype=dtype, rounding=rounding, straight_through=straight_through)


class Scramble(BlockTransform):
    r"""Block scrambling: output block :math:`b` (row-major over the grid of blocks) is input
    block :math:`\sigma(b)` (``block_perm[b]``); the blocks themselves are unchanged. Needs a key
    with a block-scrambling key (``KeySet.generate(M, C, grid=(H // M, W // M))``) and images of
    that grid. Exact and differentiable.

    Args:
        keys: a :class:`~kpfast.keys.KeySet` with a ``grid``, or several of one grid.
        dtype: output dtype for uint8 input (default float32).

    Shape:
        - Input: :math:`(N, C, R M, Q M)` or :math:`(C, R M, Q M)` for a key of grid
          :math:`(R, Q)`.
        - Output: as the input.

    Example:
        >>> keys = kpfast.KeySet.generate(4, channels=3, grid=(8, 8))
        >>> x = torch.rand(2, 3, 32, 32)
        >>> scramble = kpfast.Scramble(keys)
        >>> torch.equal(scramble.inverse(scramble(x)), x)
        True
    """

    def __init__(self, keys: KeysLike, dtype: torch.dtype = torch.float32):
        super().__init__(keys, ("scramble",), dtype=dtype)
