"""The raw torch ops of kpfast (``torch.ops.kpfast.*``): Python entry points, fake kernels for
``torch.compile``/``torch.export``, and autograd.

Two ops do all the work (semantics.md §5); ``kpfast.plan`` turns key sets into their arguments
(schemas and argument meanings: csrc/schemas.h):

* ``block_lut``: ``out[l] = tables[table_id[l], level(x[src[l]])]`` where level is the byte for
  uint8 images and ``quantize(x * qscale)`` for float images. One read and one write per element.
  Not differentiable (a straight-through estimator lives in ``kpfast.functional``).
* ``block_affine``: ``out[l] = (scale[l] * x[src[l]] + bias[l] - sub[l]) / div[l]`` for float
  images; differentiable in ``x``. Where every row of ``src`` is a permutation (every transform
  kpfast builds) the backward is the same op with the inverse gather; any other ``src`` (a
  position read twice or never) gets the general scatter-add gradient in eager mode, and a clear
  error inside ``torch.compile`` graphs, where the values of ``src`` are unknown while tracing.

The fake kernels check what the C++ ops check (csrc/op_checks.h: same order, same messages), so a
compiled graph refuses what the eager op refuses; only key values are left to the kernels.
"""
from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import is_fake
from torch.utils.weak import WeakIdKeyDictionary

__all__ = ["block_lut", "block_affine"]

SCALE, BIAS, SUB, DIV = range(4)  # rows of the affine params, as in csrc/kernels/block_index.h

# Limits of csrc/kernels/block_index.h, and the dtypes the kernels compute in.
MAX_BLOCK_POSITIONS = 2**31 - 1
MAX_LEVELS = 2**24
_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_FLOAT_NAMES = "float32, float64, float16 or bfloat16"
_FLOAT_MAX = torch.finfo(torch.float32).max


def block_lut(x: torch.Tensor, src: torch.Tensor, table_id: torch.Tensor, tables: torch.Tensor,
              block_size: int, qscale: float = 255.0, rounding: str = "floor",
              key_index: torch.Tensor | None = None) -> torch.Tensor:
    return torch.ops.kpfast.block_lut.default(x, src, table_id, tables, block_size, qscale, rounding,
                                              key_index)


def block_affine(x: torch.Tensor, src: torch.Tensor, params: torch.Tensor, block_size: int,
                 key_index: torch.Tensor | None = None) -> torch.Tensor:
    return torch.ops.kpfast.block_affine.default(x, src, params, block_size, key_index)


# ---------------------------------------------------------------------------------------------
# Fake kernels: the checks of csrc/op_checks.h, then an empty output of the right kind.

def _check_device(op, name, t, x):
    torch._check(t.device == x.device, lambda: f"{op}: {name} is on {t.device} but the images are on "
                 f"{x.device}; move the key to the images' device")


def _check_block_input(op, x, block_size, src):
    torch._check(x.dim() == 4, lambda: f"{op}: expected an NCHW image batch (4 dims), got {x.dim()} dims "
                 f"with shape {list(x.shape)}")
    torch._check(block_size >= 1, lambda: f"{op}: block_size must be >= 1, got {block_size}")
    M, (C, H, W) = block_size, x.shape[1:]
    torch._check(C >= 1, lambda: f"{op}: the image batch has no channels")
    for size in (H, W):
        torch._check(size % M == 0, lambda: f"{op}: image height and width ({H}, {W}) must be divisible by "
                     f"the block size {M}")
    L = M * M * C
    torch._check(L <= MAX_BLOCK_POSITIONS, lambda: f"{op}: block_size {M} is too large: a {M}x{M}x{C} block "
                 f"has more than {MAX_BLOCK_POSITIONS} positions")
    torch._check(src.dim() == 2 and src.shape[1] == L, lambda: f"{op}: src must have shape [K, {L}] (block "
                 f"positions of a {M}x{M}x{C} block), got {list(src.shape)}; was the key made for another "
                 "block size or channel count?")
    torch._check(src.dtype == torch.int64, lambda: f"{op}: src must be int64, got {src.dtype}")
    torch._check(src.shape[0] >= 1, lambda: f"{op}: src holds no key (K = 0)")
    _check_device(op, "src", src, x)
    return L


def _check_key_index(op, key_index, x, src):
    N, K = x.shape[0], src.shape[0]
    if key_index is None:
        torch._check(K == 1, lambda: f"{op}: {K} key sets given but no key_index saying which image uses which")
        return
    torch._check(key_index.dim() == 1 and key_index.shape[0] == N, lambda: f"{op}: key_index must have shape "
                 f"[{N}] (one key per image), got {list(key_index.shape)}")
    torch._check(key_index.dtype == torch.int64, lambda: f"{op}: key_index must be int64, got {key_index.dtype}")
    _check_device(op, "key_index", key_index, x)


@torch.library.register_fake("kpfast::block_lut")
def _block_lut_fake(x, src, table_id, tables, block_size, qscale, rounding, key_index):
    op = "kpfast.block_lut"
    L = _check_block_input(op, x, block_size, src)
    torch._check(x.dtype == torch.uint8 or x.dtype in _FLOATS, lambda: f"{op}: images must be uint8 or "
                 f"floating point ({_FLOAT_NAMES}), got {x.dtype}")
    K = src.shape[0]
    torch._check(table_id.dim() == 2 and table_id.shape[0] == K and table_id.shape[1] == L,
                 lambda: f"{op}: table_id must have shape [{K}, {L}], got {list(table_id.shape)}")
    torch._check(table_id.dtype == torch.int64, lambda: f"{op}: table_id must be int64, got {table_id.dtype}")
    torch._check(tables.dim() == 2 and tables.shape[0] >= 1, lambda: f"{op}: tables must have shape [T, V] "
                 f"with T >= 1, got {list(tables.shape)}")
    torch._check(tables.dtype in _FLOATS, lambda: f"{op}: tables must be floating point ({_FLOAT_NAMES}), "
                 f"got {tables.dtype}")
    V = tables.shape[1]
    torch._check(x.dtype != torch.uint8 or V >= 256, lambda: f"{op}: uint8 images need 256-entry tables, got {V}")
    torch._check(V >= 1, lambda: f"{op}: tables have no entries (V = 0); float images need V >= 1 levels")
    torch._check(V <= MAX_LEVELS, lambda: f"{op}: tables too wide ({V} entries, at most {MAX_LEVELS})")
    _check_device(op, "table_id", table_id, x)
    _check_device(op, "tables", tables, x)
    torch._check(0 < qscale <= _FLOAT_MAX, lambda: f"{op}: qscale must be a positive finite number (at most "
                 f"{_FLOAT_MAX:g}), got {qscale}")
    torch._check(rounding in ("floor", "nearest"), lambda: f'{op}: rounding must be "floor" or "nearest", '
                 f'got "{rounding}"')
    _check_key_index(op, key_index, x, src)
    return _output_like(x, tables.dtype)


@torch.library.register_fake("kpfast::block_affine")
def _block_affine_fake(x, src, params, block_size, key_index):
    op = "kpfast.block_affine"
    L = _check_block_input(op, x, block_size, src)
    torch._check(x.dtype in _FLOATS, lambda: f"{op}: the affine path needs floating point images "
                 f"({_FLOAT_NAMES}), got {x.dtype} (uint8 images take the table path)")
    K = src.shape[0]
    torch._check(params.dim() == 3 and params.shape[0] == K and params.shape[1] == 4 and params.shape[2] == L,
                 lambda: f"{op}: params must have shape [{K}, 4, {L}], got {list(params.shape)}")
    torch._check(params.dtype == torch.float64, lambda: f"{op}: params must be float64, got {params.dtype}")
    _check_device(op, "params", params, x)
    _check_key_index(op, key_index, x, src)
    return _output_like(x, x.dtype)


def _output_like(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # Same rule as the kernels: channels_last stays channels_last, anything else is contiguous.
    fmt = torch._prims_common.suggest_memory_format(x)
    return torch.empty(x.shape, dtype=dtype, device=x.device, memory_format=fmt)


# ---------------------------------------------------------------------------------------------
# Autograd

# Whether each src tensor seen by a backward holds permutations: (its version, the answer). The
# transforms pass the same key tensors on every call, so their check (and, on a GPU, its device
# synchronisation) happens once.
_permutation_rows: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _rows_are_permutations(src: torch.Tensor) -> torch.Tensor:
    return (src.sort(dim=1).values == torch.arange(src.shape[1], device=src.device)).all()


def _known_permutations(src: torch.Tensor) -> bool:
    version, known = _permutation_rows.get(src, (None, False))
    if version != src._version:
        known = bool(_rows_are_permutations(src))
        _permutation_rows[src] = (src._version, known)
    return known


def _inverse_gather(grad, src, params, block_size, key_index):
    """The input gradient when every row of src is a permutation: position m of a block was read
    by exactly one l = inv[m], so it receives scale[l] * grad[l] / div[l]; the op computes that."""
    inv = torch.argsort(src, dim=1)
    back = torch.zeros_like(params)
    back[:, SCALE] = params[:, SCALE].gather(1, inv)
    back[:, DIV] = params[:, DIV].gather(1, inv)
    return block_affine(grad, inv, back, block_size, key_index)


def _scatter_add(grad, src, params, block_size, key_index):
    """The input gradient for any src: position m of a block receives the sum of
    scale[l] * grad[l] / div[l] over the l with src[l] = m (none: zero)."""
    K, L = src.shape
    M, (N, C, H, W) = block_size, grad.shape
    weights = torch.zeros_like(params)
    weights[:, SCALE], weights[:, DIV] = params[:, SCALE], params[:, DIV]
    # Every term with the op's own rounding (the identity gather), then summed block by block.
    terms = block_affine(grad, torch.arange(L, device=src.device).expand(K, L), weights, M, key_index)
    blocks = terms.reshape(N, C, H // M, M, W // M, M).permute(0, 2, 4, 3, 5, 1).reshape(N, H // M, W // M, L)
    index = (src if key_index is None else src[key_index]).view(-1, 1, 1, L).expand_as(blocks)
    summed = torch.zeros_like(blocks).scatter_add_(3, index, blocks)
    return summed.reshape(N, H // M, W // M, M, M, C).permute(0, 5, 1, 3, 2, 4).reshape(N, C, H, W)


def _affine_setup_context(ctx, inputs, output):
    _, src, params, block_size, key_index = inputs
    ctx.block_size = block_size
    ctx.save_for_backward(src, params, key_index)


def _affine_backward(ctx, grad):
    src, params, key_index = ctx.saved_tensors
    args = (grad, src, params, ctx.block_size, key_index)
    if torch.compiler.is_compiling() or is_fake(src):  # a stand-in without values while a graph is traced
        torch._assert_async(_rows_are_permutations(src), "kpfast.block_affine: the backward inside "
                            "torch.compile needs src rows that are permutations; call it eagerly for any other src")
        dx = _inverse_gather(*args)
    else:
        dx = _inverse_gather(*args) if _known_permutations(src) else _scatter_add(*args)
    return dx, None, None, None, None


def _lut_backward(ctx, grad):
    raise RuntimeError("kpfast.block_lut (FFX, or a uint8 table) is not differentiable; for attacks "
                       "build the transform with straight_through=True")


torch.library.register_autograd("kpfast::block_lut", _lut_backward, setup_context=lambda ctx, inputs, output: None)
torch.library.register_autograd("kpfast::block_affine", _affine_backward,
                                setup_context=_affine_setup_context)
