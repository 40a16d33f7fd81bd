"""The raw torch ops of kpfast (``torch.ops.kpfast.*``): Python entry points, fake kernels for
``torch.compile``/``torch.export``, and autograd.

Two ops do all the work (semantics.md §5); ``kpfast.plan`` turns key sets into their arguments
(schemas and argument meanings: csrc/schemas.h). Below, ``x[b, l]`` is position ``l`` of block
``b`` (row-major over the image's ``B = (H/M) * (W/M)`` blocks); with block scrambling
(``block_src``, int64 [K, B]) output block ``b`` reads input block ``block_src[b]``, else block ``b``:

* ``block_lut``: ``out[b, l] = tables[table_id[l], level(x[block_src[b], src[l]])]`` where level is
  the byte for uint8 images and ``quantize(x * qscale)`` for float images. One read and one write
  per element. Not differentiable (a straight-through estimator lives in ``kpfast.functional``).
* ``block_affine``: ``out[b, l] = (scale[l] * x[block_src[b], src[l]] + bias[l] - sub[l]) / div[l]``
  for float images; differentiable in ``x``. Where every row of ``src`` and of ``block_src`` is a
  permutation (every transform kpfast builds) the backward is the same op with the inverse gathers;
  any other ``src`` or ``block_src`` (a position or block read twice or never) gets the general
  scatter-add gradient in eager mode, and a clear error inside ``torch.compile`` graphs, where
  their values are unknown while tracing.

Both take ``out=``: the registered overloads ``block_lut.out`` and ``block_affine.out`` (tagged
``out``, so ``torch.compile`` functionalises them) write into a caller's buffer of the output's
shape and dtype on the images' device: NCHW-contiguous and channels_last buffers directly, any
other non-overlapping layout through a copy. Like torch's out= ops they record no gradient (an
error when one is needed) and bump the buffer's version counter; a buffer that shares memory with
an argument is refused. Inside ``torch.compile``, Dynamo takes contiguous out= buffers only (as for
every out= op).

The fake kernels check what the C++ ops check (csrc/op_checks.h: same order, same messages), so a
compiled graph refuses what the eager op refuses; only key values and where an out= buffer lies in
memory are left to the kernels.
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
              key_index: torch.Tensor | None = None, block_src: torch.Tensor | None = None, *,
              out: torch.Tensor | None = None) -> torch.Tensor:
    args = (x, src, table_id, tables, block_size, qscale, rounding, key_index, block_src)
    if out is None:
        return torch.ops.kpfast.block_lut.default(*args)
    return torch.ops.kpfast.block_lut.out(*args, out=out)


def block_affine(x: torch.Tensor, src: torch.Tensor, params: torch.Tensor, block_size: int,
                 key_index: torch.Tensor | None = None, block_src: torch.Tensor | None = None, *,
                 out: torch.Tensor | None = None) -> torch.Tensor:
    args = (x, src, params, block_size, key_index, block_src)
    if out is None:
        return torch.ops.kpfast.block_affine.default(*args)
    return torch.ops.kpfast.block_affine.out(*args, out=out)


# ---------------------------------------------------------------------------------------------
# Fake kernels: the checks of csrc/op_checks.h, then an empty output of the right kind.

def _check_device(op, name, t, x, fix="move the key to the images' device"):
    torch._check(t.device == x.device, lambda: f"{op}: {name} is on {t.device} but the images are on "
                 f"{x.device}; {fix}")


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


def _check_block_src(op, block_src, x, block_size, K):
    if block_src is None:
        return
    H, W = x.shape[2:]
    rows, cols = H // block_size, W // block_size
    torch._check(block_src.dim() == 2 and block_src.shape[1] == rows * cols, lambda: f"{op}: block_src must have "
                 f"shape [K, {rows * cols}] (the {rows}x{cols} blocks of {H}x{W} images in {block_size}x{block_size} "
                 f"blocks), got {list(block_src.shape)}; was the key made for another image size?")
    torch._check(block_src.shape[0] == K, lambda: f"{op}: block_src must have one row per key set ({K}), got "
                 f"{list(block_src.shape)}")
    torch._check(block_src.dtype == torch.int64, lambda: f"{op}: block_src must be int64, got {block_src.dtype}")
    _check_device(op, "block_src", block_src, x)


def _elements_are_distinct(t: torch.Tensor) -> bool:
    """No two elements share a memory location, from the strides alone (csrc/op_checks.h)."""
    if t.numel() == 0:
        return True
    span = 0
    for stride, size in sorted((st, s) for s, st in zip(t.shape, t.stride()) if s > 1):
        if stride <= span:
            return False
        span += stride * (size - 1)
    return True


def _check_out(op, out, x, dtype):
    torch._check(out.shape == x.shape, lambda: f"{op}: out must have the images' shape {list(x.shape)}, got "
                 f"{list(out.shape)}")
    torch._check(out.dtype == dtype, lambda: f"{op}: out must be {dtype} (the output dtype), got {out.dtype}")
    _check_device(op, "out", out, x, "give an out buffer on the images' device")
    torch._check(_elements_are_distinct(out), lambda: f"{op}: out has elements that share memory (strides "
                 f"{list(out.stride())}); give a buffer with one memory location per element")


def _check_lut(x, src, table_id, tables, block_size, qscale, rounding, key_index, block_src):
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
    _check_block_src(op, block_src, x, block_size, K)
    return op, tables.dtype


def _check_affine(x, src, params, block_size, key_index, block_src):
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
    _check_block_src(op, block_src, x, block_size, K)
    return op, x.dtype


@torch.library.register_fake("kpfast::block_lut")
def _block_lut_fake(x, src, table_id, tables, block_size, qscale, rounding, key_index, block_src=None):
    _, dtype = _check_lut(x, src, table_id, tables, block_size, qscale, rounding, key_index, block_src)
    return _output_like(x, dtype)


@torch.library.register_fake("kpfast::block_lut.out")
def _block_lut_out_fake(x, src, table_id, tables, block_size, qscale, rounding, key_index, block_src=None, *, out):
    op, dtype = _check_lut(x, src, table_id, tables, block_size, qscale, rounding, key_index, block_src)
    _check_out(op, out, x, dtype)
    return out


@torch.library.register_fake("kpfast::block_affine")
def _block_affine_fake(x, src, params, block_size, key_index, block_src=None):
    _, dtype = _check_affine(x, src, params, block_size, key_index, block_src)
    return _output_like(x, dtype)


@torch.library.register_fake("kpfast::block_affine.out")
def _block_affine_out_fake(x, src, params, block_size, key_index, block_src=None, *, out):
    op, dtype = _check_affine(x, src, params, block_size, key_index, block_src)
    _check_out(op, out, x, dtype)
    return out


def _output_like(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # Same rule as the kernels: channels_last stays channels_last, anything else is contiguous.
    fmt = torch._prims_common.suggest_memory_format(x)
    return torch.empty(x.shape, dtype=dtype, device=x.device, memory_format=fmt)


# ---------------------------------------------------------------------------------------------
# Autograd

# Whether each key tensor (src, block_src) seen by a backward holds permutations: (its version, the
# answer). The transforms pass the same key tensors on every call, so their check (and, on a GPU,
# its device synchronisation) happens once.
_permutation_rows: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _rows_are_permutations(index: torch.Tensor) -> torch.Tensor:
    return (index.sort(dim=1).values == torch.arange(index.shape[1], device=index.device)).all()


def _known_permutations(index: torch.Tensor | None) -> bool:
    if index is None:  # no block scrambling: the identity
        return True
    version, known = _permutation_rows.get(index, (None, False))
    if version != index._version:
        known = bool(_rows_are_permutations(index))
        _permutation_rows[index] = (index._version, known)
    return known


def _inverse_gather(grad, src, params, block_size, key_index, block_src=None):
    """The input gradient when every row of src and of block_src is a permutation: position m of
    block c was read by exactly one (b, l) = (inverse of block_src[c], inv[m]), so it receives
    scale[l] * grad[b, l] / div[l]; the op computes that."""
    inv = torch.argsort(src, dim=1)
    back = torch.zeros_like(params)
    back[:, SCALE] = params[:, SCALE].gather(1, inv)
    back[:, DIV] = params[:, DIV].gather(1, inv)
    inv_blocks = None if block_src is None else torch.argsort(block_src, dim=1)
    return block_affine(grad, inv, back, block_size, key_index, inv_blocks)


def _scatter_add(grad, src, params, block_size, key_index, block_src=None):
    """The input gradient for any src and block_src: position m of block c receives the sum of
    scale[l] * grad[b, l] / div[l] over the (b, l) with block_src[b] = c and src[l] = m (none: zero)."""
    K, L = src.shape
    M, (N, C, H, W) = block_size, grad.shape
    B = (H // M) * (W // M)
    weights = torch.zeros_like(params)
    weights[:, SCALE], weights[:, DIV] = params[:, SCALE], params[:, DIV]
    # Every term with the op's own rounding (the identity gather), then summed image by image.
    terms = block_affine(grad, torch.arange(L, device=src.device).expand(K, L), weights, M, key_index)
    blocks = terms.reshape(N, C, H // M, M, W // M, M).permute(0, 2, 4, 3, 5, 1).reshape(N, B * L)
    keys = slice(None) if key_index is None else key_index
    sources = torch.arange(B, device=src.device).view(1, B) if block_src is None else block_src[keys]
    index = (L * sources.view(-1, B, 1) + src[keys].view(-1, 1, L)).expand(N, B, L)  # source block, position
    summed = torch.zeros_like(blocks).scatter_add_(1, index.reshape(N, B * L), blocks)
    return summed.reshape(N, H // M, W // M, M, M, C).permute(0, 5, 1, 3, 2, 4).reshape(N, C, H, W)


def _affine_setup_context(ctx, inputs, output):
    _, src, params, block_size, key_index, block_src = inputs
    ctx.block_size = block_size
    ctx.save_for_backward(src, params, key_index, block_src)


def _affine_backward(ctx, grad):
    src, params, key_index, block_src = ctx.saved_tensors
    args = (grad, src, params, ctx.block_size, key_index, block_src)
    if torch.compiler.is_compiling() or is_fake(src):  # a stand-in without values while a graph is traced
        ok = _rows_are_permutations(src)
        if block_src is not None:
            ok = ok & _rows_are_permutations(block_src)
        torch._assert_async(ok, "kpfast.block_affine: the backward inside torch.compile needs src rows that are "
                            "permutations (block_src rows too); call it eagerly for any other src or block_src")
        dx = _inverse_gather(*args)
    else:
        known = _known_permutations(src) and _known_permutations(block_src)
        dx = _inverse_gather(*args) if known else _scatter_add(*args)
    return dx, None, None, None, None, None


def _lut_backward(ctx, grad):
    raise RuntimeError("kpfast.block_lut (FFX, or a uint8 table) is not differentiable; for attacks "
                       "build the transform with straight_through=True")


torch.library.register_autograd("kpfast::block_lut", _lut_backward, setup_context=lambda ctx, inputs, output: None)
torch.library.register_autograd("kpfast::block_affine", _affine_backward,
                                setup_context=_affine_setup_context)
