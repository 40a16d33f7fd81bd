"""The raw ops: opcheck (schema, fake kernels, autograd registration), gradients, torch.compile,
and property tests with hypothesis."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kpfast
from kpfast import ops


def random_lut_args(n=3, c=3, h=8, w=8, M=4, K=1, T=3, V=256, dtype=torch.uint8, out_dtype=torch.float32):
    L = M * M * c
    x = torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8) if dtype == torch.uint8 else torch.rand(n, c, h, w, dtype=dtype)
    src = torch.stack([torch.randperm(L) for _ in range(K)])
    table_id = torch.randint(0, T, (K, L))
    tables = torch.randn(T, V).to(out_dtype)
    key_index = torch.randint(0, K, (n,)) if K > 1 else None
    return x, src, table_id, tables, M, 255.0, "floor", key_index, None  # no block scrambling


def random_affine_args(n=3, c=3, h=8, w=8, M=4, K=1, dtype=torch.float32, requires_grad=False):
    L = M * M * c
    x = torch.rand(n, c, h, w, dtype=dtype, requires_grad=requires_grad)
    src = torch.stack([torch.randperm(L) for _ in range(K)])
    params = torch.rand(K, 4, L, dtype=torch.float64) + 0.5
    key_index = torch.randint(0, K, (n,)) if K > 1 else None
    return x, src, params, M, key_index, None  # no block scrambling


def naive_lut(x, src, table_id, tables, M, qscale, rounding, key_index, block_src=None):
    """Per-element loops straight from the schema's definition (slow, obviously right); no block
    scrambling (tests/test_ops_scramble.py has its reference)."""
    assert block_src is None
    N, C, H, W = x.shape
    out = torch.empty(N, C, H, W, dtype=tables.dtype)
    for n in range(N):
        k = 0 if key_index is None else int(key_index[n])
        for y in range(H):
            for xx in range(W):
                for c in range(C):
                    l = ((y % M) * M + xx % M) * C + c
                    s = int(src[k, l])
                    sy, sx, sc = (s // C) // M, (s // C) % M, s % C
                    v = x[n, sc, y - y % M + sy, xx - xx % M + sx]
                    if x.dtype == torch.uint8:
                        level = int(v)
                    else:
                        t = float(v.float() * torch.tensor(qscale, dtype=torch.float32))
                        t = torch.floor(torch.tensor(t)) if rounding == "floor" else torch.round(torch.tensor(t))
                        level = int(t.nan_to_num(0).clamp(0, tables.shape[1] - 1))
                    out[n, c, y, xx] = tables[table_id[k, l], level]
    return out


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("K", [1, 3])
def test_block_lut_matches_naive_loops(dtype, K):
    args = random_lut_args(n=3, c=3, h=8, w=12, M=4, K=K, dtype=dtype)
    assert torch.equal(ops.block_lut(*args), naive_lut(*args))


def test_block_lut_quantises_out_of_range_and_nan():
    x = torch.tensor([-1.0, float("nan"), 2.0, float("inf"), -float("inf"), 0.5]).reshape(1, 1, 1, 6)
    tables = torch.arange(256, dtype=torch.float32).unsqueeze(0)
    src, tid = torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1, dtype=torch.long)
    out = ops.block_lut(x, src, tid, tables, 1, 255.0, "floor", None)
    assert out.flatten().tolist() == [0, 0, 255, 255, 0, 127]
    out = ops.block_lut(x, src, tid, tables, 1, 255.0, "nearest", None)
    assert out.flatten().tolist()[-1] == 128


@pytest.mark.parametrize("args", [
    random_lut_args(),
    random_lut_args(K=3, dtype=torch.float32, out_dtype=torch.bfloat16),
    random_lut_args(n=0),
])
def test_opcheck_block_lut(args):
    torch.library.opcheck(torch.ops.kpfast.block_lut.default, args)


@pytest.mark.parametrize("args", [
    random_affine_args(),
    random_affine_args(K=2, requires_grad=True),
    random_affine_args(dtype=torch.float64, requires_grad=True),
])
def test_opcheck_block_affine(args):
    torch.library.opcheck(torch.ops.kpfast.block_affine.default, args)


def test_opcheck_channels_last():
    x, *rest = random_affine_args(requires_grad=False)
    torch.library.opcheck(torch.ops.kpfast.block_affine.default,
                          (x.contiguous(memory_format=torch.channels_last), *rest))


@pytest.mark.parametrize("K", [1, 2])
def test_block_affine_gradcheck(K):
    x, src, params, M, key_index, _ = random_affine_args(n=2, c=2, h=4, w=4, M=2, K=K, dtype=torch.float64,
                                                      requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: ops.block_affine(t, src, params, M, key_index), (x,))


def repeating_src(K, L):
    """Rows that are no permutation: position 1 is read twice (and so some position never)."""
    src = torch.stack([torch.randperm(L) for _ in range(K)])
    src[:, 0] = 1
    src[:, -1] = 1
    return src


@pytest.mark.parametrize("K", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True])
def test_block_affine_gradcheck_without_a_permutation(K, channels_last):
    x, _, params, M, key_index, _ = random_affine_args(n=3, c=2, h=4, w=4, M=2, K=K, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    src = repeating_src(K, 8)
    assert torch.autograd.gradcheck(lambda t: ops.block_affine(t, src, params, M, key_index), (x,))


def test_block_affine_gradient_follows_src_changed_in_place():
    x, src, params, M, _, _ = random_affine_args(n=2, c=1, h=4, w=4, M=2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: ops.block_affine(t, src, params, M), (x,))
    src[0, 0] = src[0, 1]  # no longer a permutation: the cached answer must not be reused
    assert torch.autograd.gradcheck(lambda t: ops.block_affine(t, src, params, M), (x,))


def test_scatter_gradient_equals_the_inverse_gather_on_permutations():
    """The general gradient, on a permutation, is the fast one bit for bit (the same rounding)."""
    x, src, params, M, key_index, _ = random_affine_args(n=4, c=3, h=8, w=8, M=4, K=3)
    params[:, ops.BIAS], params[:, ops.SUB] = torch.randn(2, 3, 48, dtype=torch.float64)
    grad = torch.randn_like(x).contiguous(memory_format=torch.channels_last)
    fast = ops._inverse_gather(grad, src, params, M, key_index)
    assert torch.equal(ops._scatter_add(grad, src, params, M, key_index), fast)


def test_permutation_backward_is_one_op_call():
    from torch.utils._python_dispatch import TorchDispatchMode

    class Calls(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(str(func.overloadpacket))
            return func(*args, **(kwargs or {}))

    x, src, params, M, key_index, _ = random_affine_args(K=2, requires_grad=True)
    out = ops.block_affine(x, src, params, M, key_index)
    ops._known_permutations(src)  # the check is cached per key tensor; count the steady state
    with Calls() as calls:
        out.sum().backward()
    assert calls.names.count("kpfast.block_affine") == 1 and "aten.scatter_add_" not in calls.names, calls.names


def test_compiled_backward_refuses_a_non_permutation():
    x, _, params, M, _, _ = random_affine_args(n=2, c=1, h=4, w=4, M=2, requires_grad=True)
    src = repeating_src(1, 4)
    step = torch.compile(lambda t: ops.block_affine(t, src, params, M).sum(), fullgraph=True, backend="aot_eager")
    with pytest.raises(RuntimeError, match="needs src rows that are permutations"):
        step(x).backward()


def test_transform_gradient_equals_plain_torch():
    keys = kpfast.KeySet.generate(4)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.3, 0.4)
    t = kpfast.BlockTransform(keys, ("shuffle", "negpos"), mean=mean, std=std)
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    w = torch.randn(2, 3, 8, 8)
    (t(x) * w).sum().backward()
    # Reference gradient: d out / d in through the inverse transform of the weights.
    x2 = x.detach().clone().requires_grad_()
    L = 48
    b = x2.reshape(2, 3, 2, 4, 2, 4).permute(0, 2, 4, 3, 5, 1).reshape(2, 2, 2, L)[..., keys.perm]
    b = torch.where(keys.np_mask, 1 - b, b)
    y = b.reshape(2, 2, 2, 4, 4, 3).permute(0, 5, 1, 3, 2, 4).reshape(2, 3, 8, 8)
    y = (y - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    (y * w).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)


def test_ffx_straight_through_gradient():
    keys = kpfast.KeySet.generate(2)
    x = torch.rand(1, 3, 4, 4, requires_grad=True)
    plain = kpfast.FFX(keys)
    ste = kpfast.FFX(keys, straight_through=True)
    assert torch.equal(plain(x.detach()), ste(x).detach())
    with pytest.raises(RuntimeError, match="straight_through"):
        plain(x).sum().backward()
    ste(x).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))  # FFX has no gather: the identity gradient
    x.grad = None
    t = kpfast.BlockTransform(keys, ("ffx", "shuffle"), straight_through=True)
    w = torch.randn(1, 3, 4, 4)
    (t(x) * w).sum().backward()
    assert torch.equal(x.grad, kpfast.Shuffle(keys).inverse(w))


@pytest.mark.parametrize("backend", ["eager", "aot_eager", "inductor"])
def test_torch_compile_fullgraph(backend):
    keys = kpfast.KeySet.generate(4)
    t = kpfast.BlockTransform(keys, mean=(0.5,) * 3, std=(0.25,) * 3)
    net = torch.nn.Conv2d(3, 4, 3)

    def step(images_u8, images_f):
        return net(t(images_u8)).sum() + net(kpfast.BlockTransform.forward(t, images_f)).sum()

    compiled = torch.compile(step, fullgraph=True, backend=backend)
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    xf = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(compiled(x, xf), step(x, xf))


def test_torch_compile_with_gradient():
    t = kpfast.Shuffle(kpfast.KeySet.generate(2))
    x = torch.rand(2, 3, 4, 4, requires_grad=True)
    compiled = torch.compile(lambda v: (t(v) ** 2).sum(), fullgraph=True, backend="aot_eager")
    compiled(x).backward()
    torch.testing.assert_close(x.grad, 2 * x.detach())


@settings(max_examples=25, deadline=None)
@given(M=st.sampled_from([1, 2, 4, 8]), C=st.integers(1, 4), n=st.integers(0, 3), bh=st.integers(1, 3),
       bw=st.integers(1, 3), cl=st.booleans(),
       ops_=st.lists(st.sampled_from(["shuffle", "negpos", "ffx"]), min_size=1, max_size=4))
def test_properties_of_any_chain(M, C, n, bh, bw, cl, ops_):
    if ops_.count("ffx") > 1:  # FFX of FFX output is lossy by definition (not on the 8-bit lattice)
        ops_ = [o for o in ops_ if o != "ffx"] + ["ffx"]
    keys = kpfast.KeySet.generate(M, C)
    t = kpfast.BlockTransform(keys, ops_, rounding="nearest")
    x = torch.randint(0, 256, (n, C, bh * M, bw * M), dtype=torch.uint8)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    out = t(x)
    # the fused integer path equals the step-by-step float path, and inverts exactly
    assert torch.equal(out, t(x.float() / 255))
    assert torch.equal(torch.round(t.inverse(out) * 255).to(torch.uint8), x)
    # shuffle keeps every block's multiset of values
    if ops_ == ["shuffle"]:
        assert torch.equal(out.flatten().sort().values, (x.float() / 255).flatten().sort().values)
