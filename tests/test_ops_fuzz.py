"""A seeded random fuzz of the two raw ops: arguments in and out of range, odd strides, zero sizes,
non-contiguous and channels_last inputs, many keys, bad key_index values, block scrambling
(block_src) and out= buffers of every layout.

Every call must either return what an independent reference computes from the schemas
(csrc/schemas.h) in plain torch, bit for bit and in the input's memory format (or in the out=
buffer, which it returns), or raise a RuntimeError that names the op, and it must raise exactly when
the reference refuses the arguments. The fake kernel (torch.compile, torch.export) must refuse
exactly the arguments whose shapes, dtypes or scalars are bad (bad key values, and an out= buffer
that shares memory with an argument, only the kernels can see).

KPFAST_FUZZ_CASES (default 300 per op) and KPFAST_FUZZ_SEED (default 0) size and replay a run;
scripts/sanitize.sh runs many more cases under AddressSanitizer and UndefinedBehaviorSanitizer.
"""
import math
import os
import random

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import kpfast  # noqa: F401  (registers the ops)

CASES = int(os.environ.get("KPFAST_FUZZ_CASES", "300"))
SEED = int(os.environ.get("KPFAST_FUZZ_SEED", "0"))
FLOATS = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
NOT_KERNEL_TYPES = [torch.int32, torch.int64, torch.bool, torch.float8_e4m3fn]
MAX_POSITIONS, MAX_LEVELS = 2**31 - 1, 2**24
FLOAT_MAX = torch.finfo(torch.float32).max


# ----------------------------------------------------------------------------------------------
# The reference: the schemas' definitions in plain torch, refusing what they do not define.

class Refused(Exception):
    """kind "args": bad shapes, dtypes or scalars; kind "values": bad key values."""

    def __init__(self, kind, why):
        super().__init__(f"{kind}: {why}")
        self.kind = kind


def require(ok, why, kind="args"):
    if not ok:
        raise Refused(kind, why)


def reference_geometry(x, src, M):
    require(x.dim() == 4, "x is not NCHW")
    require(M >= 1, "block size < 1")
    N, C, H, W = x.shape
    require(C >= 1 and H % M == 0 and W % M == 0, "no channels, or sizes not divisible")
    L = M * M * C  # Python integers: no overflow
    require(L <= MAX_POSITIONS, "block too large")
    require(src.dim() == 2 and src.shape[1] == L and src.dtype == torch.int64 and src.shape[0] >= 1, "src")
    return N, C, L, src.shape[0]


def reference_block_src(block_src, x, M, K):
    """The number of blocks B of an image, after checking block_src's shape and dtype."""
    B = (x.shape[2] // M) * (x.shape[3] // M)
    if block_src is not None:
        require(block_src.dim() == 2 and block_src.shape == (K, B) and block_src.dtype == torch.int64, "block_src")
    return B


def elements_are_distinct(t):
    """Every element's memory offset, counted: all different."""
    offsets = torch.zeros((), dtype=torch.int64)
    for d, (size, stride) in enumerate(zip(t.shape, t.stride())):
        offsets = offsets.unsqueeze(-1) + torch.arange(size) * stride
    return offsets.unique().numel() == t.numel()


def share_memory(a, b):
    if a is None or a.numel() == 0 or b.numel() == 0:
        return False

    def span(t):
        return t.data_ptr(), t.data_ptr() + (sum((n - 1) * st for n, st in zip(t.shape, t.stride())) + 1) * t.element_size()

    (a0, a1), (b0, b1) = span(a), span(b)
    return a0 < b1 and b0 < a1


def reference_out(out, x, dtype, args):
    """An out= buffer: the output's shape and dtype, one memory location per element, and no
    memory shared with an argument (which only the eager op sees)."""
    if out is None:
        return
    require(out.shape == x.shape and out.dtype == dtype and elements_are_distinct(out), "out")
    require(not any(isinstance(a, torch.Tensor) and share_memory(out, a) for a in args), "out shares memory", "values")


def scramble(b, block_src, keys):
    """Output block j of each image n reads its block block_src[keys[n], j] (row-major)."""
    if block_src is None:
        return b
    N, bh, bw, L = b.shape
    index = block_src[keys].view(N, bh * bw, 1).expand(N, bh * bw, L)
    return b.reshape(N, bh * bw, L).gather(1, index).reshape(N, bh, bw, L)


def reference_keys(key_index, N, K):
    if key_index is None:
        require(K == 1, "several keys but no key_index")
        return torch.zeros(N, dtype=torch.long)
    require(key_index.dim() == 1 and key_index.shape[0] == N and key_index.dtype == torch.int64, "key_index")
    return key_index


def check_values(x, checks):
    """Key values count only where they are read: an empty output reads none."""
    if x.numel() > 0:
        for ok, why in checks:
            require(ok, why, "values")


def in_range(t, size):
    return t.numel() == 0 or (int(t.min()) >= 0 and int(t.max()) < size)


def to_blocks(x, M):
    """[N, C, H, W] -> [N, H/M, W/M, L] with l = ((y % M) * M + x % M) * C + c."""
    N, C, H, W = x.shape
    return x.reshape(N, C, H // M, M, W // M, M).permute(0, 2, 4, 3, 5, 1).reshape(N, H // M, W // M, M * M * C)


def from_blocks(b, M, C):
    N, bh, bw, _ = b.shape
    return b.reshape(N, bh, bw, M, M, C).permute(0, 5, 1, 3, 2, 4).reshape(N, C, bh * M, bw * M)


def per_image(t, keys, b):
    """Rows t[k] of each image's key, broadcast over its blocks."""
    return t[keys].reshape(keys.shape[0], 1, 1, t.shape[-1]).expand(*b.shape[:3], -1)


def math_type(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def reference_lut(x, src, table_id, tables, M, qscale, rounding, key_index, block_src, out=None):
    N, C, L, K = reference_geometry(x, src, M)
    require(x.dtype == torch.uint8 or x.dtype in FLOATS, "image dtype")
    require(table_id.shape == (K, L) and table_id.dtype == torch.int64, "table_id")
    require(tables.dim() == 2 and tables.shape[0] >= 1 and tables.dtype in FLOATS, "tables")
    T, V = tables.shape
    require(V >= (256 if x.dtype == torch.uint8 else 1) and V <= MAX_LEVELS, "table width")
    require(math.isfinite(qscale) and 0 < qscale <= FLOAT_MAX, "qscale")
    require(rounding in ("floor", "nearest"), "rounding")
    keys = reference_keys(key_index, N, K)
    B = reference_block_src(block_src, x, M, K)
    reference_out(out, x, tables.dtype, (x, src, table_id, tables, key_index, block_src))
    check_values(x, [(in_range(src, L), "src"), (in_range(table_id, T), "table_id"), (in_range(keys, K), "key_index"),
                     (block_src is None or in_range(block_src, B), "block_src")])
    if x.numel() == 0:
        return torch.empty(x.shape, dtype=tables.dtype)
    b = scramble(to_blocks(x, M), block_src, keys)
    v = b.gather(3, per_image(src, keys, b))
    if x.dtype == torch.uint8:
        level = v.long()
    else:
        t = v.to(math_type(x.dtype)) * torch.tensor(qscale, dtype=math_type(x.dtype))
        t = torch.floor(t) if rounding == "floor" else torch.round(t)
        level = t.nan_to_num(0.0).clamp(0, V - 1).long()
    return from_blocks(tables[per_image(table_id, keys, b), level], M, C)


def reference_affine(x, src, params, M, key_index, block_src, out=None):
    N, C, L, K = reference_geometry(x, src, M)
    require(x.dtype in FLOATS, "image dtype")
    require(params.shape == (K, 4, L) and params.dtype == torch.float64, "params")
    keys = reference_keys(key_index, N, K)
    B = reference_block_src(block_src, x, M, K)
    reference_out(out, x, x.dtype, (x, src, params, key_index, block_src))
    check_values(x, [(in_range(src, L), "src"), (in_range(keys, K), "key_index"),
                     (block_src is None or in_range(block_src, B), "block_src")])
    if x.numel() == 0:
        return torch.empty(x.shape, dtype=x.dtype)
    b = scramble(to_blocks(x, M), block_src, keys)
    v = b.gather(3, per_image(src, keys, b)).to(math_type(x.dtype))
    scale, bias, sub, div = (per_image(params[:, j].to(v.dtype), keys, b) for j in range(4))
    return from_blocks((scale * v + bias - sub) / div, M, C).to(x.dtype)


# ----------------------------------------------------------------------------------------------
# Random arguments

class Case:
    def __init__(self, seed):
        self.rng = random.Random(seed)
        self.gen = torch.Generator().manual_seed(seed)
        self.notes = []

    def pick(self, name, common, rare=(), p_rare=0.05):
        value = self.rng.choice(rare) if rare and self.rng.random() < p_rare else self.rng.choice(common)
        self.notes.append(f"{name}={value!r}"[:60])
        return value

    def ints(self, low, high, shape):
        return torch.randint(low, high, shape, generator=self.gen)

    def values(self, dtype, shape):
        if dtype == torch.uint8:
            return self.ints(0, 256, shape).to(torch.uint8)
        if dtype in (torch.int32, torch.int64, torch.bool):
            return self.ints(0, 2, shape).to(dtype)
        v = torch.rand(shape, generator=self.gen, dtype=torch.float64) * 1.5 - 0.25
        special = torch.tensor([math.nan, math.inf, -math.inf, -0.0, 1.0, 0.5 / 255, 1e30, -1e-30], dtype=torch.float64)
        if v.numel():
            flat = v.view(-1)
            flat[self.ints(0, v.numel(), (max(1, v.numel() // 8),))] = special[self.ints(0, len(special), (1,))]
        return v.to(dtype)

    def tensor(self, name, dtype, shape, layouts=("contiguous", "transpose", "strided")):
        """A tensor of `shape` in a random memory layout: odd strides, views, stride 0 or huge strides."""
        layout = self.pick(f"{name}.layout", layouts)
        n = len(shape)
        if layout == "channels_last" and n == 4:
            return self.values(dtype, shape).contiguous(memory_format=torch.channels_last)
        if layout == "transpose" and n >= 2:
            return self.values(dtype, (*shape[:-2], shape[-1], shape[-2])).transpose(-1, -2)
        if layout == "strided":  # every dim a strided window of a larger tensor
            big = self.values(dtype, tuple(2 * s + 1 for s in shape))
            return big[tuple(slice(1, 1 + 2 * s, 2) for s in shape)]
        if layout == "expand" and n >= 1 and shape[0] > 1:
            return self.values(dtype, (1, *shape[1:])).expand(shape)
        if layout == "huge_strides":  # dims of size 0 or 1 may have any stride
            t = self.values(dtype, shape)
            strides = [2**40 + 7 if s <= 1 else st for s, st in zip(shape, t.stride())]
            return t.as_strided(shape, strides)
        if layout == "permuted" and n == 4:
            return self.values(dtype, (shape[2], shape[3], shape[0], shape[1])).permute(2, 3, 0, 1)
        return self.values(dtype, shape)

    def index(self, name, shape, size):
        """int64 indices in [0, size), sometimes out of range, of another dtype or shape."""
        t = self.ints(0, max(1, size), shape)
        bad = self.pick(f"{name}.bad", [None] * 12, ["high", "negative", "huge", "int32", "shape"], p_rare=0.15)
        if bad == "high" and t.numel():
            t.view(-1)[self.rng.randrange(t.numel())] = size
        elif bad == "negative" and t.numel():
            t.view(-1)[self.rng.randrange(t.numel())] = -1
        elif bad == "huge" and t.numel():
            t.view(-1)[self.rng.randrange(t.numel())] = 2**62
        elif bad == "int32":
            t = t.int()
        elif bad == "shape":
            t = self.ints(0, max(1, size), (*shape[:-1], shape[-1] + 1) if shape else (1,))
        if self.pick(f"{name}.view", [False, False, True]) and t.dim() >= 1:  # a non-contiguous copy
            big = torch.empty((*t.shape[:-1], 2 * t.shape[-1]), dtype=t.dtype)
            big[..., ::2] = t
            t = big[..., ::2]
        return t

    def common(self, op):
        """x, src, block size and key_index for either op."""
        M = self.pick("M", [1, 2, 2, 3, 4, 4, 8], [0, -1, 2**32, 2**62, 26755, 46341])
        C = self.pick("C", [1, 2, 3, 3, 4], [0])
        N = self.pick("N", [0, 1, 2, 3, 5])
        if 1 <= M <= 8:
            H, W = (self.pick("bh", [0, 1, 2, 3]) * M, self.pick("bw", [1, 2, 3]) * M)
            if not self.pick("divisible", [True], [False]):
                W += 1
        else:
            H, W = 0, self.pick("W", [0], [4])
        dtypes = ([torch.uint8] * 3 if op == "lut" else []) + FLOATS
        dtype = self.pick("x.dtype", dtypes, NOT_KERNEL_TYPES, p_rare=0.05)
        x = self.tensor("x", dtype, (N, C, H, W),
                        ("contiguous", "channels_last", "transpose", "strided", "expand", "huge_strides", "permuted"))
        if self.pick("x.dims", [4], [3, 1], p_rare=0.02) != 4:
            x = x[0] if x.shape[0] else x.reshape(-1)
        L = max(M, 0) ** 2 * C if 1 <= M <= 8 else 4
        K = self.pick("K", [1, 1, 1, 2, 3], [0, 64])
        kind = self.pick("src", ["perm", "perm", "random"])
        src = (torch.stack([torch.randperm(L, generator=self.gen) for _ in range(K)]) if kind == "perm" and K
               else self.ints(0, max(1, L), (K, L)))
        if self.pick("src.check", [True] * 6, [False]):  # a bad value, dtype or shape now and then
            src = self.index("src", (K, L), L)
        key_index = None
        if K != 1 or self.pick("key_index.given", [False, True]):
            key_index = self.index("key_index", (N,), K)
            if self.pick("key_index.dropped", [False] * 20, [True]):
                key_index = None
        block_src = None
        if self.pick("block_src.given", [False, True]) and x.dim() == 4 and M >= 1:
            B = (x.shape[2] // M) * (x.shape[3] // M)
            if self.pick("block_src", ["perm", "perm", "random"]) == "perm" and K:
                block_src = torch.stack([torch.randperm(B, generator=self.gen) for _ in range(K)])
                block_src = self.index("block_src", (K, B), B) if self.pick("block_src.check", [False] * 6, [True]) else block_src
            else:
                block_src = self.index("block_src", (K, B), B)
        return x, src, M, key_index, K, L, block_src

    def out(self, x, dtype, args):
        """Sometimes an out= buffer: mostly the right one in any layout, now and then of another shape
        or dtype, with elements that share memory, or sharing memory with an argument."""
        if not self.pick("out.given", [False, False, True]) or x.dim() != 4:
            return None
        kind = self.pick("out.kind", ["good"] * 12, ["shape", "dtype", "an argument", "overlapping"], p_rare=0.25)
        if kind == "an argument":  # laid over the memory of an argument, if one has enough
            size = torch.empty(0, dtype=dtype).element_size()
            need = x.numel() * size
            big = [a for a in args if isinstance(a, torch.Tensor) and a.numel() and a.untyped_storage().nbytes() >= need]
            if big:
                a = self.rng.choice(big)
                offset = min(a.storage_offset() * a.element_size(), a.untyped_storage().nbytes() - need) // size
                return torch.empty(0, dtype=dtype).set_(a.untyped_storage(), offset, x.shape)
            kind = "overlapping"
        shape = tuple(x.shape) if kind != "shape" else (*x.shape[:-1], x.shape[-1] + 1)
        if kind == "dtype":
            dtype = self.rng.choice([d for d in FLOATS if d != dtype])
        layouts = ("contiguous", "channels_last", "transpose", "strided", "permuted")
        out = self.tensor("out", dtype, shape, ("expand", "huge_strides") if kind == "overlapping" else layouts)
        return out

    def lut_args(self):
        x, src, M, key_index, K, L, block_src = self.common("lut")
        T = self.pick("T", [1, 2, 5], [0])
        uint8 = x.dtype == torch.uint8
        V = self.pick("V", [256, 300] if uint8 else [1, 2, 256, 1000], [0, 255, 3])
        tables = self.tensor("tables", self.pick("tables.dtype", FLOATS, NOT_KERNEL_TYPES), (T, V))
        if self.pick("tables.empty_view", [False] * 20, [True]):
            tables = tables[:, 1:1]
        table_id = self.index("table_id", (K, L), T)
        qscale = self.pick("qscale", [255.0, 255.0, 1.0, 999.0, 0.5, 1e6],
                           [0.0, -255.0, math.nan, math.inf, -math.inf, 1e39, 1e-30])
        rounding = self.pick("rounding", ["floor", "nearest"], ["up", ""])
        args = (x, src, table_id, tables, M, qscale, rounding, key_index, block_src)
        return args, self.out(x, tables.dtype, args)

    def affine_args(self):
        x, src, M, key_index, K, L, block_src = self.common("affine")
        shape = self.pick("params.shape", [(K, 4, L)] * 15, [(K, 3, L), (K + 1, 4, L), (K, 4, L + 1)])
        params = self.tensor("params", self.pick("params.dtype", [torch.float64] * 15, [torch.float32]), shape)
        args = (x, src, params, M, key_index, block_src)
        return args, self.out(x, x.dtype, args)


OPS = {
    "block_lut": (torch.ops.kpfast.block_lut, reference_lut, Case.lut_args),
    "block_affine": (torch.ops.kpfast.block_affine, reference_affine, Case.affine_args),
}


def call(op, args, out):
    return op.default(*args) if out is None else op.out(*args, out=out)


def run_fake(op, args, out):
    mode = FakeTensorMode()
    fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
    with mode:
        call(op, fake, None if out is None else mode.from_tensor(out))


def outcome(fn, *args, errors=(RuntimeError,)):
    try:
        return fn(*args), None
    except errors as e:
        return None, e


@pytest.mark.parametrize("name", OPS)
def test_random_arguments(name):
    op, reference, make_args = OPS[name]
    counts = {"computed": 0, "refused": 0}
    for i in range(CASES):
        case = Case(SEED * 1_000_003 + i)
        args, out = make_args(case)
        where = f"case {i} (KPFAST_FUZZ_SEED={SEED}): " + ", ".join(case.notes)
        expected, why = outcome(reference, *args, out, errors=Refused)
        actual, error = outcome(call, op, args, out)
        if why is None:
            assert error is None, f"{where}: the op refused valid arguments: {error}"
            torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True, msg=lambda m: f"{where}: {m}")
            if out is None:
                fmt = torch.channels_last if x_is_channels_last(args[0]) else torch.contiguous_format
                assert actual.is_contiguous(memory_format=fmt), f"{where}: output not in the input's memory format"
            else:
                assert actual is out, f"{where}: out= did not return its buffer"
        else:
            assert error is not None, f"{where}: the op computed a result for bad arguments ({why})"
            assert f"kpfast.{name}: " in str(error), f"{where}: the error does not name the op: {error}"
        _, fake_error = outcome(run_fake, op, args, out)
        refused_by_shape = why is not None and why.kind == "args"
        assert (fake_error is not None) == refused_by_shape, (
            f"{where}: fake kernel {'refused' if fake_error else 'accepted'} ({fake_error}), reference: {why}")
        counts["computed" if why is None else "refused"] += 1
    # Both outcomes must be common, or the fuzz tests little (about half and half by design).
    assert min(counts.values()) >= CASES // 5, counts


def x_is_channels_last(x):
    return torch._prims_common.suggest_memory_format(x) == torch.channels_last
