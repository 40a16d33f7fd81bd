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
from .plan import OUTPUT_DTYPES, ROUNDINGS, TRANSFORMS, KeysLike, as_key_list, check_options  # noqa: F401
from .program import Program, check_images, warn_if_out_of_range

__all__ = ["BlockTransform", "Shuffle", "NegPos", "FFX", "KeysLike", "OUTPUT_DTYPES"]


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
    """A chain of block transforms under one key set (or one of several, per image).

    Args:
        keys: a :class:`KeySet`, or a sequence of key sets; with several, ``forward`` takes a
            ``key_index`` tensor saying which key set each image uses (many keys, one launch).
        ops: the transforms in the order they are applied: any of ``"shuffle"``, ``"negpos"``,
            ``"ffx"``.
        mean, std: Normalize of the destination channel, folded into the same pass.
        dtype: output dtype for uint8 input.
        rounding: how FFX quantises float input: ``"floor"`` (the reference) or ``"nearest"``
            (right for images that went through normalize/denormalize).
        straight_through: give FFX a straight-through gradient (the gradient of the pixel
            shuffle alone), for attacks; FFX is otherwise not differentiable.

    Shape:
        ``[N, C, H, W]`` or ``[C, H, W]`` in and out, H and W divisible by the block size.

    Example::

        keys = KeySet.generate(4)
        t = BlockTransform(keys, ("shuffle", "negpos", "ffx"), rounding="nearest")
        y = t(images_uint8)                  # float32, protected
        x = t.inverse(y)                     # float32 in [0, 1]; round(255 * x) == images
    """

    def __init__(self, keys: KeysLike, ops: Sequence[str] = TRANSFORMS, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, dtype: torch.dtype = torch.float32,
                 rounding: str = "floor", straight_through: bool = False):
        super().__init__()
        key_list = as_key_list(keys)
        first = key_list[0]
        self.ops, (self.mean, self.std) = check_options(ops, first.channels, mean=mean, std=std, dtype=dtype,
                                                        rounding=rounding)
        self.dtype, self.rounding, self.straight_through = dtype, rounding, bool(straight_through)
        self.block_size, self.channels, self.num_keys = first.block_size, first.channels, len(key_list)
        self._keys: tuple[KeySet, ...] = tuple(key_list)
        self._device = torch.device("cpu")
        self._programs = _Programs()
        self._range_warned = False

    def forward(self, x: torch.Tensor, key_index: torch.Tensor | None = None) -> torch.Tensor:
        """Protect images: uint8 or float in [0, 1], NCHW or CHW."""
        return self._run(x, key_index, inverse=False)

    def inverse(self, y: torch.Tensor, key_index: torch.Tensor | None = None) -> torch.Tensor:
        """Undo ``forward`` (Normalize included): returns float images in [0, 1].

        With FFX, inverting several key sets in one call needs one ``ffx_max`` (ConfigError otherwise)."""
        return self._run(y, key_index, inverse=True)

    def program(self, *, inverse: bool = False, integer_input: bool = True) -> Program:
        """The compiled program this transform runs for that direction and input kind (built now
        if it was not used yet), on the transform's device; e.g. for ``kpfast.functional``."""
        _ensure_program(self, inverse, integer_input)
        return getattr(self._programs, _slot(inverse, integer_input))

    def _run(self, x: torch.Tensor, key_index: torch.Tensor | None, inverse: bool) -> torch.Tensor:
        single = isinstance(x, torch.Tensor) and x.dim() == 3
        if single:
            x = x.unsqueeze(0)
        check_images(x, block_size=self.block_size, channels=self.channels, num_keys=self.num_keys,
                     device=self._device, key_index=key_index)
        if not torch.compiler.is_compiling() and not inverse and not self._range_warned:
            self._range_warned = warn_if_out_of_range(x)
        out = self.program(inverse=inverse, integer_input=x.dtype == torch.uint8)(
            x, key_index, straight_through=self.straight_through)
        return out.squeeze(0) if single else out

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
        """Everything but the key, to rebuild the transform with :meth:`from_config`."""
        return {"type": "block", "ops": list(self.ops), "block_size": self.block_size,
                "channels": self.channels, "mean": self.mean, "std": self.std,
                "dtype": str(self.dtype).removeprefix("torch."), "rounding": self.rounding,
                "straight_through": self.straight_through}

    @classmethod
    def from_config(cls, config: dict[str, Any], keys: KeysLike) -> BlockTransform:
        key_list = as_key_list(keys)
        k = key_list[0]
        if (k.block_size, k.channels) != (config["block_size"], config["channels"]):
            raise ConfigError(f"the key is for {k.block_size}x{k.block_size} blocks with {k.channels} channels, "
                             f"the transform for {config['block_size']}x{config['block_size']} with "
                             f"{config['channels']}")
        # Configs written before straight_through was recorded had none.
        return cls(key_list, config["ops"], config["mean"], config["std"], getattr(torch, config["dtype"]),
                   config["rounding"], config.get("straight_through", False))

    def __repr__(self) -> str:  # the compiled programs are an implementation detail
        return f"{type(self).__name__}({self.extra_repr()})"

    def extra_repr(self) -> str:
        norm = "" if self.mean is None else f", mean={self.mean}, std={self.std}"
        return (f"ops={self.ops}, block_size={self.block_size}, channels={self.channels}{norm}, "
                f"dtype={self.dtype}, keys={self.fingerprint()}")


class Shuffle(BlockTransform):
    """Block-wise pixel shuffling: ``out[l] = in[perm[l]]`` in every block."""

    def __init__(self, keys: KeysLike, dtype: torch.dtype = torch.float32):
        super().__init__(keys, ("shuffle",), dtype=dtype)


class NegPos(BlockTransform):
    """Negative/positive transform: ``1 - x`` (``255 - p`` on bytes) at the key's positions."""

    def __init__(self, keys: KeysLike, dtype: torch.dtype = torch.float32):
        super().__init__(keys, ("negpos",), dtype=dtype)


class FFX(BlockTransform):
    """Format-preserving (FFX) encryption of the pixel values at the key's positions."""

    def __init__(self, keys: KeysLike, rounding: str = "floor", dtype: torch.dtype = torch.float32,
                 straight_through: bool = False):
        super().__init__(keys, ("ffx",), dtype=dtype, rounding=rounding, straight_through=straight_through)
