"""The raw torch ops of kpfast (``torch.ops.kpfast.*``): Python entry points, fake kernels for
``torch.compile``/``torch.export``, and autograd.

Two ops do all the work (semantics.md §5); ``kpfast.plan`` turns key sets into their arguments:

* ``block_lut``: ``out[l] = tables[table_id[l], level(x[src[l]])]`` where level is the byte for
  uint8 images and ``quantize(x * qscale)`` for float images. One read and one write per element.
  Not differentiable (a straight-through estimator lives in ``kpfast.functional``).
* ``block_affine``: ``out[l] = (scale[l] * x[src[l]] + bias[l] - sub[l]) / div[l]`` for float
  images; differentiable in ``x`` (the backward is the same op with the inverse gather).

``src`` must hold a permutation of the block positions in every row for the backward to be right.
"""
from __future__ import annotations

import torch

__all__ = ["block_lut", "block_affine"]

SCALE, BIAS, SUB, DIV = range(4)  # rows of the affine params, as in csrc/kernels/block_index.h


def block_lut(x: torch.Tensor, src: torch.Tensor, table_id: torch.Tensor, tables: torch.Tensor,
              block_size: int, qscale: float = 255.0, rounding: str = "floor",
              key_index: torch.Tensor | None = None) -> torch.Tensor:
    return torch.ops.kpfast.block_lut.default(x, src, table_id, tables, block_size, qscale, rounding,
                                              key_index)


def block_affine(x: torch.Tensor, src: torch.Tensor, params: torch.Tensor, block_size: int,
                 key_index: torch.Tensor | None = None) -> torch.Tensor:
    return torch.ops.kpfast.block_affine.default(x, src, params, block_size, key_index)


def _output_like(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # Same rule as the kernels: channels_last stays channels_last, anything else is contiguous.
    fmt = torch._prims_common.suggest_memory_format(x)
    return torch.empty(x.shape, dtype=dtype, device=x.device, memory_format=fmt)


def _check_devices(x: torch.Tensor, **keys: torch.Tensor | None) -> None:
    for name, t in keys.items():
        if t is not None:
            torch._check(t.device == x.device, lambda: f"{name} is on {t.device} but the images are on "
                         f"{x.device}; move the key to the images' device")


def _check_geometry(x: torch.Tensor, src: torch.Tensor, block_size: int) -> None:
    torch._check(x.dim() == 4, lambda: f"expected an NCHW image batch, got shape {tuple(x.shape)}")
    torch._check(block_size >= 1, lambda: "block_size must be >= 1")
    torch._check(x.shape[2] % block_size == 0 and x.shape[3] % block_size == 0,
                 lambda: f"image size {tuple(x.shape[2:])} is not divisible by block size {block_size}")
    torch._check(src.dim() == 2 and src.shape[1] == block_size * block_size * x.shape[1],
                 lambda: "src must have shape [K, M*M*C]")


@torch.library.register_fake("kpfast::block_lut")
def _block_lut_fake(x, src, table_id, tables, block_size, qscale, rounding, key_index):
    _check_devices(x, src=src, table_id=table_id, tables=tables, key_index=key_index)
    _check_geometry(x, src, block_size)
    torch._check(x.dtype == torch.uint8 or x.dtype.is_floating_point, lambda: "uint8 or float images")
    return _output_like(x, tables.dtype)


@torch.library.register_fake("kpfast::block_affine")
def _block_affine_fake(x, src, params, block_size, key_index):
    _check_devices(x, src=src, params=params, key_index=key_index)
    _check_geometry(x, src, block_size)
    torch._check(x.dtype.is_floating_point, lambda: "the affine path needs float images")
    return _output_like(x, x.dtype)


def _affine_setup_context(ctx, inputs, output):
    _, src, params, block_size, key_index = inputs
    ctx.block_size = block_size
    ctx.save_for_backward(src, params, key_index)


def _affine_backward(ctx, grad):
    src, params, key_index = ctx.saved_tensors
    # d out[l] / d x[src[l]] = scale[l] / div[l]; with inv = src^-1 the gradient at source position m
    # is scale[inv[m]] * grad[inv[m]] / div[inv[m]]: the same op with the inverse gather.
    inv = torch.argsort(src, dim=1)
    back = torch.zeros_like(params)
    back[:, SCALE] = params[:, SCALE].gather(1, inv)
    back[:, DIV] = params[:, DIV].gather(1, inv)
    return block_affine(grad, inv, back, ctx.block_size, key_index), None, None, None, None


def _lut_backward(ctx, grad):
    raise RuntimeError("kpfast.block_lut (FFX, or a uint8 table) is not differentiable; for attacks "
                       "build the transform with straight_through=True")


torch.library.register_autograd("kpfast::block_lut", _lut_backward, setup_context=lambda ctx, inputs, output: None)
torch.library.register_autograd("kpfast::block_affine", _affine_backward,
                                setup_context=_affine_setup_context)
