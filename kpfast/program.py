"""A compiled transform chain: the arguments of its op launches, for one or many keys, and how to
run them.

A :class:`Program` is what :func:`kpfast.plan.compile` returns: a short sequence of launches of
the two kpfast ops (docs/semantics.md §5), each holding its key data stacked over the K key sets
(``src`` int64 [K, L], and the affine ``params`` or the deduplicated LUT ``tables``). It is pure
data: immutable, ``program.to(device)`` returns a moved copy, and ``program(x, key_index)`` runs
it. Modules (:class:`kpfast.BlockTransform`) and the functional forms both run Programs.

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
    """``block_affine``: ``out[l] = (scale[l] * x[src[l]] + bias[l] - sub[l]) / div[l]``."""
    src: torch.Tensor     # int64 [K, L]
    params: torch.Tensor  # float64 [K, 4, L]: scale, bias, sub, div


@dataclass(frozen=True, eq=False, repr=False)
class LutLaunch(_KeyData):
    """``block_lut``: ``out[l] = tables[table_id[l], level(x[src[l]])]``."""
    src: torch.Tensor       # int64 [K, L]
    table_id: torch.Tensor  # int64 [K, L]
    tables: torch.Tensor    # [T, V]: the distinct per-position tables of all keys
    qscale: float           # quantisation scale of float input (unused for uint8)
    rounding: str


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

    def __call__(self, x: torch.Tensor, key_index: torch.Tensor | None = None, *,
                 straight_through: bool = False) -> torch.Tensor:
        """Apply the launches to NCHW images (checked by the ops; see :func:`check_images`).

        ``straight_through``: table launches on float input that requires grad return their
        value with the gradient of the bare gather (BPDA, for attacks)."""
        for launch in self.launches:
            if isinstance(launch, AffineLaunch):
                x = ops.block_affine(x, launch.src, launch.params, self.block_size, key_index)
            elif straight_through and x.requires_grad:
                out = self._lut(launch, x.detach(), key_index)
                moved = ops.block_affine(x, launch.src, identity_params(*launch.src.shape, x.device),
                                         self.block_size, key_index)
                x = out + (moved - moved.detach()).to(out.dtype)
            else:
                x = self._lut(launch, x, key_index)
        return x

    def _lut(self, launch: LutLaunch, x: torch.Tensor, key_index: torch.Tensor | None) -> torch.Tensor:
        # uint8 programs store their tables in the output dtype; float output keeps x's dtype.
        tables = launch.tables if self.integer_input else launch.tables.to(x.dtype)
        return ops.block_lut(x, launch.src, launch.table_id, tables, self.block_size, launch.qscale,
                             launch.rounding, key_index)

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
