"""Bad input gets a clear error that names the problem, never a crash or a wrong result."""
import pytest
import torch

import kpfast
from kpfast import ops

KEYS = kpfast.KeySet.generate(4)
X = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)


def lut_args(**change):
    L = 48
    args = dict(x=X, src=torch.randperm(L).unsqueeze(0), table_id=torch.zeros(1, L, dtype=torch.long),
                tables=torch.rand(1, 256), block_size=4, qscale=255.0, rounding="floor", key_index=None)
    args.update(change)
    return args


def affine_args(**change):
    L = 48
    params = torch.ones(1, 4, L, dtype=torch.float64)
    args = dict(x=X.float(), src=torch.randperm(L).unsqueeze(0), params=params, block_size=4, key_index=None)
    args.update(change)
    return args


@pytest.mark.parametrize("x, error, match", [
    (X.int(), TypeError, "uint8 or floating point"),
    (X[:, :, :6], ValueError, "not divisible by the block size 4"),
    (X[:, :1], ValueError, "1 channels but the key was made for 3"),
    (X.unsqueeze(0), ValueError, r"\[N, C, H, W\]"),
    ([[1, 2]], TypeError, "expected a tensor"),
    (torch.empty(1, 3, 8, 8, dtype=torch.uint8, device="meta"), ValueError, "call .to"),
])
def test_transform_rejects_bad_images(x, error, match):
    with pytest.raises(error, match=match):
        kpfast.BlockTransform(KEYS)(x)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(ops=("shuffle", "rotate")), ValueError, "unknown transform 'rotate'"),
    (dict(rounding="up"), ValueError, "rounding"),
    (dict(dtype=torch.int32), ValueError, "dtype"),
    (dict(mean=(0.5,) * 3), ValueError, "both mean and std"),
    (dict(mean=(0.5,) * 2, std=(0.2,) * 2), ValueError, "3 values"),
    (dict(mean=(0.5,) * 3, std=(0.2, 0.0, 0.2)), ValueError, "positive"),
])
def test_transform_rejects_bad_options(kwargs, error, match):
    with pytest.raises(error, match=match):
        kpfast.BlockTransform(KEYS, **kwargs)


def test_transform_rejects_bad_keys():
    with pytest.raises(TypeError, match="KeySet"):
        kpfast.BlockTransform([])
    with pytest.raises(TypeError, match="KeySet"):
        kpfast.BlockTransform("secret")
    with pytest.raises(ValueError, match="same block size"):
        kpfast.BlockTransform([KEYS, kpfast.KeySet.generate(2)])
    with pytest.raises(ValueError, match="key_index"):
        kpfast.BlockTransform([KEYS, KEYS])(X)


# Bad raw-op arguments: (change, message). The ones marked VALUE are bad key values or an out=
# buffer that shares memory with an argument, which only the kernels can see; every other one is
# also refused by the fake kernel (torch.compile, torch.export).
VALUE = "value"
EMPTY = torch.rand(1, 3, 0, 0)
BLOCKS = torch.randperm(4).unsqueeze(0)  # the 2x2 blocks of X


def shared(dtype, like=(2, 3, 8, 8)):
    """A tensor of `like`'s float32 size in bytes, viewed as `dtype`, and the float32 view of its
    memory as an out= buffer: both share it."""
    memory = torch.zeros(torch.Size(like).numel(), dtype=torch.float32)
    return memory.view(dtype), memory.view(like)


def sharing(name, dtype, make):
    """Arguments where `name` = make(memory) lies in the memory of the out= buffer."""
    memory, out = shared(dtype)
    return {name: make(memory), "out": out}


# block_src and out= cases, the same for both ops (images X, 8x8 in 4x4 blocks; float32 output).
BLOCK_AND_OUT_CASES = [
    (dict(block_src=torch.randperm(9).unsqueeze(0)),
     r"block_src must have shape \[K, 4\] \(the 2x2 blocks of 8x8 images in 4x4 blocks\).*another image size"),
    (dict(block_src=torch.randperm(4)), r"block_src must have shape \[K, 4\]"),
    (dict(block_src=torch.stack([torch.randperm(4)] * 2)), r"block_src must have one row per key set \(1\)"),
    (dict(block_src=BLOCKS.int()), "block_src must be int64"),
    (dict(block_src=torch.empty(1, 4, dtype=torch.long, device="meta")), "block_src is on meta but the images are on cpu"),
    (dict(block_src=torch.tensor([[0, 1, 2, 4]])), r"block_src must hold block numbers in \[0, 4\), found 4", VALUE),
    (dict(block_src=torch.tensor([[0, -1, 2, 3]])), r"block_src must hold block numbers in \[0, 4\), found -1", VALUE),
    (dict(out=torch.empty(2, 3, 8, 4)), r"out must have the images' shape \[2, 3, 8, 8\], got \[2, 3, 8, 4\]"),
    (dict(out=torch.empty(3, 8, 8)), r"out must have the images' shape"),
    (dict(out=torch.empty(2, 3, 8, 8, dtype=torch.float64)), r"out must be (Float|torch.float32) \(the output dtype\)"),
    (dict(out=torch.empty(2, 3, 8, 8, device="meta")), "out is on meta but the images are on cpu; give an out buffer"),
    (dict(out=torch.empty(1, 3, 8, 8).expand(2, 3, 8, 8)), "out has elements that share memory"),
    (dict(out=torch.empty(16, 8).as_strided((2, 3, 8, 8), (8, 8, 8, 1))), "out has elements that share memory"),
    (sharing("src", torch.long, lambda m: m[:48].copy_(torch.randperm(48)).view(1, 48)), "out shares memory with src",
     VALUE),
    (sharing("block_src", torch.long, lambda m: m[-4:].copy_(torch.randperm(4)).view(1, 4)),
     "out shares memory with block_src", VALUE),
]
_LUT_MEMORY, _LUT_OUT = shared(torch.uint8)
_AFFINE_X = torch.rand(2, 3, 8, 8)


LUT_CASES = [
    (dict(src=torch.randperm(27).unsqueeze(0)), r"src must have shape \[K, 48\]"),
    (dict(src=torch.randperm(48).unsqueeze(0).int()), "src must be int64"),
    (dict(src=torch.empty(0, 48, dtype=torch.long), table_id=torch.empty(0, 48, dtype=torch.long)),
     r"src holds no key \(K = 0\)"),
    (dict(src=torch.full((1, 48), 48)), r"block positions in \[0, 48\)", VALUE),
    (dict(src=torch.full((1, 48), -1)), r"block positions in \[0, 48\)", VALUE),
    (dict(table_id=torch.full((1, 48), 1)), r"table_id must be in \[0, 1\)", VALUE),
    (dict(table_id=torch.zeros(2, 48, dtype=torch.long)), "table_id must have shape"),
    (dict(table_id=torch.zeros(1, 48, dtype=torch.int32)), "table_id must be int64"),
    (dict(tables=torch.rand(1, 100)), "256-entry tables"),
    (dict(tables=torch.randint(0, 9, (1, 256))), "floating point"),
    (dict(tables=torch.rand(1, 256).to(torch.float8_e4m3fn)), r"floating point \(float32, float64"),
    (dict(tables=torch.rand(0, 256)), r"tables must have shape \[T, V\] with T >= 1"),
    (dict(x=X.float(), tables=torch.empty(1, 0)), r"tables have no entries \(V = 0\)"),
    (dict(x=X.float(), tables=torch.tensor([[10.0, 20.0, 30.0], [40.0, 50.0, 60.0]])[:, 1:1]),
     r"tables have no entries \(V = 0\)"),
    (dict(x=X.float(), tables=torch.empty(1, 2**24 + 1)), "tables too wide"),
    (dict(rounding="up"), "rounding must be"),
    (dict(qscale=float("nan")), "qscale must be a positive finite number"),
    (dict(qscale=float("inf")), "qscale must be a positive finite number"),
    (dict(qscale=0.0), "qscale must be a positive finite number"),
    (dict(qscale=-255.0), "qscale must be a positive finite number"),
    (dict(qscale=1e39), "qscale must be a positive finite number"),
    (dict(block_size=3), "divisible by the block size 3"),
    (dict(block_size=0), "block_size must be >= 1"),
    (dict(x=EMPTY, block_size=2**32), "block_size 4294967296 is too large"),
    (dict(x=EMPTY, block_size=2**62), "block_size 4611686018427387904 is too large"),
    (dict(x=EMPTY, block_size=26755), "block_size 26755 is too large"),  # 3 * 26755^2 > 2^31 - 1
    (dict(key_index=torch.tensor([0, 1])), r"key_index\[1\] = 1 is out of range", VALUE),
    (dict(key_index=torch.tensor([-1, 0])), r"key_index\[0\] = -1 is out of range", VALUE),
    (dict(key_index=torch.tensor([0])), "key_index must have shape"),
    (dict(key_index=torch.tensor([0, 0], dtype=torch.int32)), "key_index must be int64"),
    (dict(src=torch.stack([torch.randperm(48)] * 2), table_id=torch.zeros(2, 48, dtype=torch.long)),
     "2 key sets given but no key_index"),
    (dict(x=X[0]), "4 dims"),
    (dict(x=X.int()), "uint8 or floating point"),
    (dict(x=X.float().to(torch.float8_e5m2)), "uint8 or floating point"),
    (dict(x=X[:, :0]), "no channels"),
    *BLOCK_AND_OUT_CASES,
    (dict(x=_LUT_MEMORY[:384].view(2, 3, 8, 8), out=_LUT_OUT), "out shares memory with x", VALUE),
    (dict(tables=_LUT_OUT.view(-1)[-256:].view(1, 256), out=_LUT_OUT), "out shares memory with tables", VALUE),
    (sharing("table_id", torch.long, lambda m: m[:48].view(1, 48)), "out shares memory with table_id", VALUE),
]
AFFINE_CASES = [
    (dict(x=X), "floating point images"),
    (dict(x=X.float().to(torch.float8_e4m3fn)), "floating point images"),
    (dict(params=torch.ones(1, 3, 48, dtype=torch.float64)), "params must have shape"),
    (dict(params=torch.ones(1, 4, 48)), "params must be float64"),
    (dict(src=torch.stack([torch.randperm(48)] * 2), params=torch.ones(2, 4, 48, dtype=torch.float64)),
     "no key_index"),
    (dict(src=torch.full((1, 48), 10**12)), r"block positions in \[0, 48\)", VALUE),
    (dict(x=EMPTY, block_size=2**32), "block_size 4294967296 is too large"),
    (dict(src=torch.randperm(48).unsqueeze(0), key_index=torch.tensor([0, 5])), r"key_index\[1\] = 5", VALUE),
    *BLOCK_AND_OUT_CASES,
    (dict(x=_AFFINE_X, out=_AFFINE_X), "out shares memory with x", VALUE),
    (dict(x=_AFFINE_X, out=_AFFINE_X.transpose(2, 3)), "out shares memory with x", VALUE),
    (dict(x=_AFFINE_X, out=_AFFINE_X[:1].expand(2, 3, 8, 8)), "out has elements that share memory"),
    (sharing("params", torch.float64, lambda m: m.view(1, 4, 48).fill_(1)), "out shares memory with params", VALUE),
    (sharing("key_index", torch.long, lambda m: m[:2]), "out shares memory with key_index", VALUE),
]


def _cases(cases):
    return [pytest.param(c[0], c[1], id=f"{i}-{c[1][:40]}") for i, c in enumerate(cases)]


@pytest.mark.parametrize("change, match", _cases(LUT_CASES))
def test_block_lut_rejects_bad_arguments(change, match):
    with pytest.raises(RuntimeError, match="kpfast.block_lut: .*" + match):
        ops.block_lut(**lut_args(**change))


@pytest.mark.parametrize("change, match", _cases(AFFINE_CASES))
def test_block_affine_rejects_bad_arguments(change, match):
    with pytest.raises(RuntimeError, match="kpfast.block_affine: .*" + match):
        ops.block_affine(**affine_args(**change))


def _fake(args):
    from torch._subclasses.fake_tensor import FakeTensorMode
    mode = FakeTensorMode()
    return mode, {k: mode.from_tensor(v) if isinstance(v, torch.Tensor) else v for k, v in args.items()}


@pytest.mark.parametrize("op, args, match", [
    *[(ops.block_lut, lut_args(**c[0]), c[1]) for c in LUT_CASES if c[-1] != VALUE],
    *[(ops.block_affine, affine_args(**c[0]), c[1]) for c in AFFINE_CASES if c[-1] != VALUE],
])
def test_fake_kernels_refuse_what_the_ops_refuse(op, args, match):
    """torch.compile and torch.export run the fake kernels: they must give the same errors."""
    mode, fake = _fake(args)
    with mode, pytest.raises(RuntimeError, match=match):
        op(**fake)


def test_fake_kernels_accept_what_the_ops_accept():
    cl = torch.empty(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    for op, args in [(ops.block_lut, lut_args()), (ops.block_lut, lut_args(x=X.float(), tables=torch.rand(1, 1))),
                     (ops.block_affine, affine_args()), (ops.block_lut, lut_args(block_src=BLOCKS)),
                     (ops.block_affine, affine_args(block_src=BLOCKS)), (ops.block_lut, lut_args(out=cl)),
                     (ops.block_affine, affine_args(out=torch.empty(2, 3, 8, 9)[..., 1:], block_src=BLOCKS))]:
        expected = op(**args)
        mode, fake = _fake(args)
        with mode:
            out = op(**fake)
        assert (out.shape, out.dtype, out.stride()) == (expected.shape, expected.dtype, expected.stride())


def test_keys_on_another_device_are_named():
    with pytest.raises(RuntimeError, match="src is on meta but the images are on cpu"):
        ops.block_lut(**lut_args(src=torch.empty(1, 48, dtype=torch.long, device="meta")))
