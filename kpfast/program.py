"""A compiled transform chain: the arguments of its op launches, for one or many keys, and how to
run them.

A :class:`Program` is what :func:`kpfast.plan.compile` returns: a short sequence of launches of
the two kpfast ops (docs/semantics.md §5), each holding its key data stacked over the K key sets
(``src`` int64 [K, L], and the affine ``params`` or the deduplicated LUT ``tables``; with block
scrambling also ``block_src`` int64 [K, B], the source block of each of the B blocks of an image).
It is pure data: immutable, ``program.to(device)`` returns a moved copy, and
``program(x, key_index)`` runs it (``out=`` writes the result into a buffer of the caller's).
Modules (:class:`kpfast.BlockTransform`) and the functional forms both run Programs.

A Program holds key material (``src`` is the permutation), so like a KeySet it is never pickled
(see :mod:`kpfast.keys`), and ``copy.deepcopy`` returns the same immutable object.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, fields, replace

import torch

from . import ops
from .errors import ConfigError, DataError
from .keys import refuse_pickling

# Float images should lie in [0, 1]; beyond half a quantisation level they are surely not.
RANGE_TOLERANCE = 0.5 / 255


def identity_params(num_keys: int, length: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """block_affine params (float64 [K, 4, L]) of the bare gather: scale 1, bias 0, sub 0, div 1."""
    params = torch.zeros(num_keys, 4, length, dtype=torch.float64, device=device)
    params[:, ops.SCALE] = 1
    params[:, ops.DIV] = 1
    return params


class _KeyData:
    """Immutable launch data: moves between devices, never pickled, deep-copied as itself."""

    def to(self, device: torch.device | str):
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(self, **{k: v.to(device) for k, v in values.items() if isinstance(v, torch.Tensor)})

    def __reduce_ex__(self, protocol):
        refuse_pickling(f"a kpfast {type(self).__name__}")
        return super().__reduce_ex__(protocol)

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self


@dataclass(frozen=True, eq=False, repr=False)
class AffineLaunch(_KeyData):
    """``block_affine``: ``out[b, l] = (scale[l] * x[block_src[b], src[l]] + bias[l] - sub[l]) / div[l]``."""
    src: torch.Tensor     # int64 [K, L]
    params: torch.Tensor  # float64 [K, 4, L]: scale, bias, sub, div
    block_src: torch.Tensor | None = None  # int64 [K, B]: block scrambling (None: block b reads block b)


@dataclass(frozen=True, eq=False, repr=False)
class LutLaunch(_KeyData):
    """``block_lut``: ``out[b, l] = tables[table_id[l], level(x[block_src[b], src[l]])]``."""
    src: torch.Tensor       # int64 [K, L]
    table_id: torch.Tensor  # int64 [K, L]
    tables: torch.Tensor    # [T, V]: the distinct per-position tables of all keys
    qscale: float           # quantisation scale of float input (unused for uint8)
    rounding: str
    block_src: torch.Tensor | None = None  # int64 [K, B]: block scrambling (None: block b reads block b)


Launch = AffineLaunch | LutLaunch


@dataclass(frozen=True, eq=False, repr=False)
class Program(_KeyData):
    """The op launches of one chain for K key sets; ``program(x, key_index)`` applies it.

    Attributes:
        ops, inverse: the chain it computes (inverted when ``inverse``).
        integer_input: made for uint8 images (one table launch whose tables are stored in the
            output ``dtype``), else for float images (output keeps the input's dtype; ``dtype``
            is unused).
        block_size, channels, num_keys: the geometry of its key sets, and K.
    """
    ops: tuple[str, ...]
    inverse: bool
    integer_input: bool
    dtype: torch.dtype
    block_size: int
    channels: int
    num_keys: int
    launches: tuple[Launch, ...]

    @property
    def device(self) -> torch.device:
        return self.launches[0].src.device

    @torch.inference_mode(False)  # a program moved inside inference mode still serves autograd
    def to(self, device: torch.device | str) -> Program:
        return replace(self, launches=tuple(launch.to(device) for launch in self.launches))

    def output_dtype(self, x: torch.Tensor) -> torch.dtype:
        """The dtype of ``self(x)``: ``dtype`` for uint8 programs, else the images' own."""
        return self.dtype if self.integer_input else x.dtype

    def __call__(self, x: torch.Tensor, key_index: torch.Tensor | None = None, *,
                 straight_through: bool = False, out: torch.Tensor | None = None) -> torch.Tensor:
        """Apply the launches to NCHW images (checked by the ops; see :func:`check_images`).

        ``straight_through``: table launches on float input that requires grad return their
        value with the gradient of the bare gather (BPDA, for attacks).
        ``out``: a buffer of the output's shape and dtype that the last launch writes and that is
        returned (earlier launches, if any, write fresh tensors); it records no gradient (see
        :func:`check_output` for the checks the modules make first)."""
        last = len(self.launches) - 1
        for i, launch in enumerate(self.launches):
            into = out if i == last else None
            if isinstance(launch, AffineLaunch):
                x = ops.block_affine(x, launch.src, launch.params, self.block_size, key_index, launch.block_src,
                                     out=into)
            elif straight_through and x.requires_grad and into is None:
                value = self._lut(launch, x.detach(), key_index)
                moved = ops.block_affine(x, launch.src, identity_params(*launch.src.shape, x.device),
                                         self.block_size, key_index, launch.block_src)
                x = value + (moved - moved.detach()).to(value.dtype)
            else:
                x = self._lut(launch, x, key_index, into)
        return x

    def _lut(self, launch: LutLaunch, x: torch.Tensor, key_index: torch.Tensor | None,
             out: torch.Tensor | None = None) -> torch.Tensor:
        # uint8 programs store their tables in the output dtype; float output keeps x's dtype.
        tables = launch.tables if self.integer_input else launch.tables.to(x.dtype)
        return ops.block_lut(x, launch.src, launch.table_id, tables, self.block_size, launch.qscale,
                             launch.rounding, key_index, launch.block_src, out=out)

    def __repr__(self) -> str:
        kinds = "+".join("affine" if isinstance(l, AffineLaunch) else "lut" for l in self.launches)  # noqa: E741
        return (f"Program(ops={self.ops}, inverse={self.inverse}, integer_input={self.integer_input}, "
                f"block_size={self.block_size}, channels={self.channels}, num_keys={self.num_keys}, "
                f"launches={kinds}, device={self.device})")


def check_images(x: object, *, block_size: int, channels: int, num_keys: int, device: torch.device | None,
                 key_index: torch.Tensor | None, owner: str = "transform") -> None:
    """Clear errors for images a chain cannot take (NCHW after unsqueezing a CHW image); ``device``
    None: the chain is made for the images' device."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a tensor of images, got {type(x).__name__}")
    if x.dtype != torch.uint8 and not x.dtype.is_floating_point:
        raise TypeError(f"images must be uint8 or floating point, got {x.dtype}")
    if x.dim() != 4:
        raise DataError(f"expected images of shape [N, C, H, W] or [C, H, W], got {tuple(x.shape)}")
    if x.shape[1] != channels:
        raise DataError(f"images have {x.shape[1]} channels but the key was made for {channels}")
    if x.shape[2] % block_size or x.shape[3] % block_size:
        raise DataError(f"image size {tuple(x.shape[2:])} is not divisible by the block size {block_size}")
    if device is not None and x.device != device:
        raise ConfigError(f"images are on {x.device} but the {owner} is on {device}; "
                         f"call .to({str(x.device)!r}) on the {owner}")
    if key_index is None and num_keys > 1:
        raise ConfigError(f"this {owner} holds {num_keys} key sets: pass key_index (one key number per image)")


def check_output(out: object, x: torch.Tensor, dtype: torch.dtype, *, owner: str = "transform") -> None:
    """Clear errors for an ``out=`` buffer that cannot take the result of ``x`` (whose output dtype is
    ``dtype``): not a tensor, another shape, dtype or device, memory shared with the images, or a
    call that needs a gradient (out= records none, as torch's out= ops)."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"out must be a tensor, got {type(out).__name__}")
    if out.shape != x.shape:
        raise DataError(f"out has shape {tuple(out.shape)} but the {owner}'s output has the images' shape "
                        f"{tuple(x.shape)}")
    if out.dtype != dtype:
        raise DataError(f"out is {out.dtype} but the {owner} outputs {dtype} for {x.dtype} images")
    if out.device != x.device:
        raise ConfigError(f"out is on {out.device} but the images are on {x.device}; give a buffer on {x.device}")
    if torch.is_grad_enabled() and (x.requires_grad or out.requires_grad):
        needs = "the images require" if x.requires_grad else "out requires"
        raise ConfigError(f"out= records no gradient, but {needs} grad; call without out= to differentiate "
                          "through the transform (or under torch.no_grad())")
    if not torch.compiler.is_compiling() and _share_memory(out, x):
        raise DataError(f"out shares memory with the images; the {owner} cannot write its output over its input: "
                        "give a separate buffer")


def _share_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether the memory spans of a and b (first to last element) intersect (as the ops check it);
    meta tensors have no memory."""
    if a.numel() == 0 or b.numel() == 0 or a.device.type == "meta":
        return False

    def span(t):
        last = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
        return t.data_ptr(), t.data_ptr() + (last + 1) * t.element_size()

    (a0, a1), (b0, b1) = span(a), span(b)
    return a0 < b1 and b0 < a1


def warn_if_out_of_range(x: torch.Tensor) -> bool:
    """Warn (and return True) when float images on the CPU lie outside [0, 1] by more than
    rounding, e.g. 0..255 floats that were not divided by 255: FFX would clamp them silently.

    Only CPU tensors outside ``torch.compile`` are checked: on an accelerator reading the result
    would wait for the device (a host sync in every step), and a traced graph has no values.
    """
    if x.device.type != "cpu" or not x.is_floating_point() or x.numel() == 0 or torch.compiler.is_compiling():
        return False
    low, high = (v.item() for v in torch.aminmax(x.detach()))
    if low >= -RANGE_TOLERANCE and high <= 1 + RANGE_TOLERANCE:
        return False
    warnings.warn(f"float images lie in [{low:.4g}, {high:.4g}], outside [0, 1]: the block transforms "
                  "expect float images in [0, 1] (divide 0..255 images by 255; FFX clamps other values)",
                  UserWarning, stacklevel=3)
    return True
