"""Block scrambling in the raw ops (``block_src``): against the numpy reference of tests/reference.py
on fresh random inputs, for every image dtype, layout, key count and block size, with random tables
and parameters and with the tables and parameters of real shuffle/NP/FFX chains; opcheck,
gradients (permutations and not), torch.compile, and bad input."""
from dataclasses import replace

import numpy as np
import pytest
import torch

import kpfast
import reference as R
from kpfast import ops, plan

FLOATS = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
LAYOUTS = ["contiguous", "channels_last", "window", "transpose"]


def images(dtype, N, C, H, W, layout):
    """Fresh random images (uint8, or floats in [-0.25, 1.25) with NaN and infinities) in a layout."""
    if dtype == torch.uint8:
        base = torch.randint(0, 256, (N, C, H + 1, W + 2), dtype=torch.uint8)
    else:
        base = torch.rand(N, C, H + 1, W + 2, dtype=torch.float64) * 1.5 - 0.25
        base.view(-1)[torch.randint(0, base.numel(), (3,))] = torch.tensor([float("nan"), float("inf"), -float("inf")],
                                                                         dtype=torch.float64)
        base = base.to(dtype)
    x = base[:, :, 1:, 1:W + 1]  # a strided window
    if layout == "window":
        return x
    if layout == "transpose":
        return x.transpose(2, 3).contiguous().transpose(2, 3)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    return x.contiguous(memory_format=fmt)


def random_keys(K, L, B):
    src = torch.stack([torch.randperm(L) for _ in range(K)])
    block_src = torch.stack([torch.randperm(B) for _ in range(K)])
    return src, block_src


def numpy_images(x):
    """The images as numpy float32 (exact for float16 and bfloat16), or as they are."""
    return x.numpy() if x.dtype in (torch.uint8, torch.float32, torch.float64) else x.float().numpy()


def assert_equal(actual, expected, dtype):
    """Bit for bit, NaN included; expected is the reference's float32 result rounded to `dtype`."""
    expected = torch.from_numpy(np.ascontiguousarray(expected)).to(dtype)
    assert actual.dtype == dtype and actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("K", [1, 3])
@pytest.mark.parametrize("in_dtype", [torch.uint8] + FLOATS, ids=str)
def test_block_lut_scrambled_matches_reference(in_dtype, K, layout):
    N, C, M = 4, 3, 4
    x = images(in_dtype, N, C, 3 * M, 2 * M, layout)
    L, B = M * M * C, 6
    src, block_src = random_keys(K, L, B)
    table_id = torch.randint(0, 5, (K, L))
    key_index = torch.randint(0, K, (N,)) if K > 1 else None
    for out_dtype in (torch.float32, torch.bfloat16):
        tables = torch.randn(5, 300).to(out_dtype)
        for rounding in ("floor", "nearest"):
            out = ops.block_lut(x, src, table_id, tables, M, 255.0, rounding, key_index, block_src)
            expected = R.block_lut(numpy_images(x), src.numpy(), table_id.numpy(), tables.float().numpy(), M, 255.0,
                                   rounding, None if key_index is None else key_index.numpy(), block_src.numpy())
            assert_equal(out, expected, out_dtype)
            if in_dtype == torch.uint8:
                break  # rounding is for float images


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("K", [1, 3])
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_block_affine_scrambled_matches_reference(dtype, K, layout):
    N, C, M = 4, 3, 2
    x = images(dtype, N, C, 2 * M, 5 * M, layout)
    L, B = M * M * C, 10
    src, block_src = random_keys(K, L, B)
    params = torch.randn(K, 4, L, dtype=torch.float64)
    key_index = torch.randint(0, K, (N,)) if K > 1 else None
    out = ops.block_affine(x, src, params, M, key_index, block_src)
    expected = R.block_affine(numpy_images(x), src.numpy(), params.numpy(), M,
                              None if key_index is None else key_index.numpy(), block_src.numpy())
    assert_equal(out, expected, dtype)


@pytest.mark.parametrize("M, C", [(1, 3), (2, 1), (4, 3), (8, 4), (16, 3)])
def test_block_sizes_and_grids(M, C):
    """Square and wide grids, one block, and block_src that is no permutation (blocks read twice)."""
    for bh, bw in [(1, 1), (2, 3), (3, 1)]:
        x = images(torch.uint8, 2, C, bh * M, bw * M, "contiguous")
        L, B = M * M * C, bh * bw
        src, block_src = random_keys(1, L, B)
        table_id, tables = torch.randint(0, 3, (1, L)), torch.randn(3, 256)
        for blocks in (block_src, torch.randint(0, B, (1, B))):
            expected = R.block_lut(x.numpy(), src.numpy(), table_id.numpy(), tables.numpy(), M, block_src=blocks.numpy())
            assert_equal(ops.block_lut(x, src, table_id, tables, M, block_src=blocks), expected, torch.float32)


def test_identity_scrambling_changes_nothing():
    x = images(torch.float32, 3, 3, 8, 12, "channels_last")
    src, _ = random_keys(2, 48, 6)
    params, key_index = torch.randn(2, 4, 48, dtype=torch.float64), torch.tensor([1, 0, 1])
    identity = torch.arange(6).repeat(2, 1)
    torch.testing.assert_close(ops.block_affine(x, src, params, 4, key_index, identity),
                               ops.block_affine(x, src, params, 4, key_index), rtol=0, atol=0, equal_nan=True)


# ---------------------------------------------------------------------------------------------
# The tables and parameters of real chains: a scrambled launch is the chain, then the scrambling.

CHAINS = [("shuffle",), ("negpos",), ("ffx",), ("shuffle", "negpos", "ffx"), ("negpos", "shuffle"),
          ("ffx", "negpos")]


def scrambled(program, block_src):
    """The program with every launch scrambled by block_src (the chain is block-local, so scrambling
    commutes with it: applying it in one launch of several scrambles once, in all of them several times)."""
    first, *rest = program.launches
    return replace(program, launches=(replace(first, block_src=block_src), *rest))


@pytest.mark.parametrize("ops_", CHAINS, ids="+".join)
@pytest.mark.parametrize("K", [1, 2])
def test_scrambled_chains_match_reference(ops_, K):
    M, C, N, bh, bw = 4, 3, 4, 2, 3
    first = kpfast.KeySet.generate(M, C)
    # Other keys share the FFX password: inverting several keys in one call needs one FFX scale.
    keys = [first] + [first.replace(perm=torch.randperm(M * M * C), np_mask=torch.rand(M * M * C) < 0.5,
                                    ffx_mask=torch.rand(M * M * C) < 0.5) for _ in range(K - 1)]
    mean, std = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
    block_src = torch.stack([torch.randperm(bh * bw) for _ in range(K)])
    key_index = torch.randint(0, K, (N,)) if K > 1 else None
    x = torch.randint(0, 256, (N, C, bh * M, bw * M), dtype=torch.uint8)
    for integer_input, images_ in [(True, x), (False, x.float() / 255)]:
        program = scrambled(plan.compile(keys, ops_, integer_input=integer_input, mean=mean, std=std,
                                         rounding="nearest"), block_src)
        out = program(images_, key_index)
        for n in range(N):
            k = 0 if key_index is None else int(key_index[n])
            expected = R.transform(x[n:n + 1].numpy(), keys[k], ops_ + ("scramble",), rounding="nearest", mean=mean,
                                   std=std, block_perm=block_src[k].numpy())
            assert_equal(out[n:n + 1], expected, torch.float32)
        # The inverse chain with the inverse scrambling recovers the bytes.
        inverse = scrambled(plan.compile(keys, ops_, inverse=True, integer_input=False, mean=mean, std=std),
                            torch.argsort(block_src, dim=1))
        assert torch.equal(torch.round(inverse(out, key_index) * 255).to(torch.uint8), x)


# ---------------------------------------------------------------------------------------------
# opcheck, gradients, torch.compile

def affine_args(K=2, requires_grad=False, dtype=torch.float32, channels_last=False, N=3, C=2):
    M, B = 2, 6
    x = torch.rand(N, C, 2 * M, 3 * M, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    src, block_src = random_keys(K, M * M * C, B)
    params = torch.rand(K, 4, M * M * C, dtype=torch.float64) + 0.5
    key_index = torch.randint(0, K, (N,)) if K > 1 else None
    return x.requires_grad_(requires_grad), src, params, M, key_index, block_src


def lut_args(K=2, dtype=torch.uint8):
    N, C, M, B = 3, 3, 4, 4
    x = images(dtype, N, C, 2 * M, 2 * M, "contiguous")
    src, block_src = random_keys(K, M * M * C, B)
    key_index = torch.randint(0, K, (N,)) if K > 1 else None
    return x, src, torch.randint(0, 4, (K, M * M * C)), torch.randn(4, 256), M, 255.0, "floor", key_index, block_src


@pytest.mark.parametrize("args", [lut_args(1), lut_args(3), lut_args(2, torch.float32)], ids=["K1", "K3", "float"])
def test_opcheck_block_lut(args):
    torch.library.opcheck(torch.ops.kpfast.block_lut.default, args)


@pytest.mark.parametrize("kwargs", [dict(K=1), dict(K=2, requires_grad=True),
                                    dict(K=1, requires_grad=True, dtype=torch.float64, channels_last=True)],
                         ids=["K1", "K2-grad", "float64-grad-cl"])
def test_opcheck_block_affine(kwargs):
    torch.library.opcheck(torch.ops.kpfast.block_affine.default, affine_args(**kwargs))


@pytest.mark.parametrize("K", [1, 2])
def test_gradcheck_permutation(K):
    x, src, params, M, key_index, block_src = affine_args(K, requires_grad=True, dtype=torch.float64, N=2, C=1)
    assert torch.autograd.gradcheck(lambda t: ops.block_affine(t, src, params, M, key_index, block_src), (x,))


@pytest.mark.parametrize("which, channels_last, K", [("blocks", False, 1), ("blocks", True, 2), ("positions", True, 2),
                                                    ("both", False, 2)])
def test_gradcheck_without_a_permutation(which, channels_last, K):
    """Blocks (or positions) read twice and others never: the general scatter-add gradient."""
    x, src, params, M, key_index, block_src = affine_args(K, requires_grad=True, dtype=torch.float64,
                                                          channels_last=channels_last, N=2, C=1)
    if which in ("blocks", "both"):
        block_src[:, 0] = block_src[:, -1]
    if which in ("positions", "both"):
        src[:, 0] = src[:, 1]
    assert torch.autograd.gradcheck(lambda t: ops.block_affine(t, src, params, M, key_index, block_src), (x,))


def test_scatter_gradient_equals_the_inverse_gather_on_permutations():
    x, src, params, M, key_index, block_src = affine_args(3)
    params[:, ops.BIAS], params[:, ops.SUB] = torch.randn(2, 3, params.shape[2], dtype=torch.float64)
    grad = torch.randn_like(x).contiguous(memory_format=torch.channels_last)
    fast = ops._inverse_gather(grad, src, params, M, key_index, block_src)
    assert torch.equal(ops._scatter_add(grad, src, params, M, key_index, block_src), fast)


def test_gradient_is_the_inverse_transform():
    """d sum(w * f(x)) / dx, for a scrambled shuffle: the unscrambled, unshuffled w."""
    x, src, _, M, _, block_src = affine_args(1, requires_grad=True)
    params = torch.zeros(1, 4, src.shape[1], dtype=torch.float64)
    params[:, ops.SCALE], params[:, ops.DIV] = 1, 1
    w = torch.randn(x.shape)
    (ops.block_affine(x, src, params, M, None, block_src) * w).sum().backward()
    b = R.segment(w.numpy(), M)
    expected = R.integrate(R.unshuffle(R.unscramble(b, block_src[0].numpy()), src[0].numpy()), M, x.shape[1])
    assert torch.equal(x.grad, torch.from_numpy(expected))


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_torch_compile_fullgraph(backend):
    x, src, params, M, key_index, block_src = affine_args(2, requires_grad=True)
    xu, *lut = lut_args(2)

    def step(v, u):
        return (ops.block_affine(v, src, params, M, key_index, block_src) ** 2).sum() + ops.block_lut(u, *lut).sum()

    compiled = torch.compile(step, fullgraph=True, backend=backend)
    expected = step(x, xu)
    (grad,) = torch.autograd.grad(expected, x)
    actual = compiled(x, xu)
    torch.testing.assert_close(actual, expected)
    torch.testing.assert_close(torch.autograd.grad(actual, x)[0], grad)


def test_compiled_backward_refuses_a_block_src_that_is_no_permutation():
    x, src, params, M, key_index, block_src = affine_args(1, requires_grad=True)
    block_src[0, 0] = block_src[0, 1]
    step = torch.compile(lambda t: ops.block_affine(t, src, params, M, key_index, block_src).sum(), fullgraph=True,
                         backend="aot_eager")
    with pytest.raises(RuntimeError, match="block_src rows too"):
        step(x).backward()
