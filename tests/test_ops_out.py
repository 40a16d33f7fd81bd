"""out=: the registered overloads block_lut.out / block_affine.out and the Python entry points that
take it (kpfast.ops, Program.__call__, BlockTransform.forward / inverse). Every buffer layout gets
what the op without out= returns, bit for bit, in the buffer itself; bad buffers get clear errors
(the raw ops' messages are in tests/test_errors.py); out= records no gradient; opcheck and
torch.compile (auto-functionalisation) accept the overloads."""
import pytest
import torch

import kpfast
from kpfast import ops, plan
from kpfast.errors import ConfigError, DataError

FLOATS = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def buffer(shape, dtype, layout):
    """An out= buffer of `shape` in a layout: dense (NCHW or channels_last, written in place) or not
    (a window of a larger buffer, another dimension order: written through a copy)."""
    N, C, H, W = shape
    if layout == "contiguous":
        return torch.full(shape, float("nan"), dtype=dtype)
    if layout == "channels_last":
        return torch.full(shape, float("nan"), dtype=dtype).contiguous(memory_format=torch.channels_last)
    if layout == "window":
        return torch.full((N + 1, C + 1, H + 2, W + 3), float("nan"), dtype=dtype)[1:, 1:, 1:H + 1, 2:W + 2]
    if layout == "unaligned":  # dense, but one element off the allocation's alignment
        return torch.full((N * C * H * W + 1,), float("nan"), dtype=dtype)[1:].view(shape)
    if layout == "hwnc":
        return torch.full((H, W, N, C), float("nan"), dtype=dtype).permute(2, 3, 0, 1)
    raise ValueError(layout)


LAYOUTS = ["contiguous", "channels_last", "window", "unaligned", "hwnc"]


def keys(x, M, K, scrambled):
    """Random src [K, L], block_src [K, B] (or None) and key_index for the images x in M x M blocks."""
    N, C, H, W = x.shape
    L, B = M * M * C, (H // M) * (W // M)
    src = torch.stack([torch.randperm(L) for _ in range(K)])
    block_src = torch.stack([torch.randperm(B) for _ in range(K)]) if scrambled else None
    return src, block_src, torch.randint(0, K, (N,)) if K > 1 else None


def lut_args(x, K=2, out_dtype=torch.float32, scrambled=False):
    src, block_src, key_index = keys(x, 4, K, scrambled)
    table_id, tables = torch.randint(0, 3, src.shape), torch.randn(3, 256).to(out_dtype)
    return x, src, table_id, tables, 4, 255.0, "nearest", key_index, block_src


def affine_args(x, K=2, scrambled=False):
    src, block_src, key_index = keys(x, 2, K, scrambled)
    return x, src, torch.randn(K, 4, src.shape[1], dtype=torch.float64), 2, key_index, block_src


def check_written(op, args, out):
    expected = op(*args)
    version = out._version
    result = op(*args, out=out)
    assert result is out
    assert out._version > version  # autograd sees the write
    torch.testing.assert_close(out, expected, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("out_dtype", FLOATS, ids=str)
@pytest.mark.parametrize("in_dtype", [torch.uint8, torch.float32])
def test_block_lut_out(in_dtype, out_dtype, layout):
    shape = (3, 3, 8, 12)
    x = torch.randint(0, 256, shape, dtype=torch.uint8) if in_dtype == torch.uint8 else torch.rand(shape)
    for scrambled in (False, True):
        check_written(ops.block_lut, lut_args(x, out_dtype=out_dtype, scrambled=scrambled), buffer(shape, out_dtype, layout))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_block_affine_out(dtype, layout):
    shape = (3, 2, 4, 6)
    for x in (torch.rand(shape, dtype=dtype), torch.rand(shape, dtype=dtype).contiguous(memory_format=torch.channels_last)):
        for scrambled in (False, True):
            check_written(ops.block_affine, affine_args(x, scrambled=scrambled), buffer(shape, dtype, layout))


def test_empty_and_single_images():
    for shape in [(0, 3, 8, 8), (1, 3, 4, 4), (2, 3, 0, 8)]:
        x = torch.randint(0, 256, shape, dtype=torch.uint8)
        out = torch.empty(shape)
        assert ops.block_lut(*lut_args(x, K=1), out=out) is out


def test_the_buffer_of_a_previous_call_can_be_used_again():
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    args = lut_args(x)
    first = ops.block_lut(*args)
    out = ops.block_lut(*args, out=torch.empty_like(first))
    y = torch.randint(0, 256, x.shape, dtype=torch.uint8)
    ops.block_lut(y, *args[1:], out=out)
    assert torch.equal(out, ops.block_lut(y, *args[1:]))


def test_an_expanded_input_is_fine():
    x = torch.rand(1, 2, 4, 6).expand(3, 2, 4, 6)
    check_written(ops.block_affine, affine_args(x), torch.empty(3, 2, 4, 6))


# ---------------------------------------------------------------------------------------------
# No gradients


def test_out_records_no_gradient():
    x = torch.rand(2, 2, 4, 6, requires_grad=True)
    args = affine_args(x)
    with pytest.raises(RuntimeError, match=r"kpfast.block_affine.out: out= records no gradient, but x requires grad"):
        ops.block_affine(*args, out=torch.empty(x.shape))
    with pytest.raises(RuntimeError, match="but out requires grad"):
        ops.block_affine(x.detach(), *args[1:], out=torch.empty(x.shape, requires_grad=True))
    xu = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    largs = list(lut_args(xu))
    largs[3] = largs[3].requires_grad_()
    with pytest.raises(RuntimeError, match=r"kpfast.block_lut.out: .*but tables requires grad"):
        ops.block_lut(*largs, out=torch.empty(xu.shape))
    with torch.no_grad():
        out = ops.block_affine(*args, out=torch.empty(x.shape))
    assert not out.requires_grad
    with torch.inference_mode():
        assert ops.block_affine(*args, out=torch.empty(x.shape)).shape == x.shape


def test_autograd_notices_an_overwritten_saved_tensor():
    """The version bump: a tensor saved for backward and then overwritten by out= is caught."""
    w = torch.rand(2, 2, 4, 6, requires_grad=True)
    saved = torch.rand(2, 2, 4, 6)
    loss = (w * saved).sum()  # saves `saved` for w's gradient
    with torch.no_grad():
        ops.block_affine(*affine_args(torch.rand(2, 2, 4, 6)), out=saved)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


# ---------------------------------------------------------------------------------------------
# opcheck and torch.compile


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "window"])
def test_opcheck(layout):
    xu = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    torch.library.opcheck(torch.ops.kpfast.block_lut.out, lut_args(xu, scrambled=True),
                          {"out": buffer(xu.shape, torch.float32, layout)})
    xf = torch.rand(3, 2, 4, 6)
    torch.library.opcheck(torch.ops.kpfast.block_affine.out, affine_args(xf, scrambled=True),
                          {"out": buffer(xf.shape, torch.float32, layout)})


@pytest.mark.parametrize("backend", ["eager", "aot_eager", "inductor"])
def test_torch_compile_fullgraph(backend):
    xu = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    largs = lut_args(xu, scrambled=True)
    xf = torch.rand(3, 2, 4, 6)
    aargs = affine_args(xf)
    keys = kpfast.KeySet.generate(4)
    t = kpfast.BlockTransform(keys, mean=(0.5,) * 3, std=(0.25,) * 3)

    def step(a, b, c, out_a, out_b, out_c):
        ops.block_lut(a, *largs[1:], out=out_a)
        ops.block_affine(b, *aargs[1:], out=out_b)
        t(c, out=out_c)
        return out_a.sum() + out_b.sum() + out_c.sum()

    compiled = torch.compile(step, fullgraph=True, backend=backend)
    # Dynamo takes contiguous out= buffers only (for every op, torch's own included).
    buffers = [torch.empty(xu.shape), torch.empty(xf.shape), torch.empty(xu.shape)]
    total = compiled(xu, xf, xu, *buffers)
    torch.testing.assert_close(buffers[0], ops.block_lut(*largs), rtol=0, atol=0)
    torch.testing.assert_close(buffers[1], ops.block_affine(*aargs), rtol=0, atol=0)
    torch.testing.assert_close(buffers[2], t(xu), rtol=0, atol=0)
    # The buffers are exact; the returned sum is a float32 reduction whose order each backend picks
    # (inductor's vectorised one differs from eager's), so it agrees to the rounding of a sum.
    magnitude = sum(b.abs().sum() for b in buffers).item()
    torch.testing.assert_close(total, sum(b.sum() for b in buffers), rtol=0, atol=1e-6 * magnitude)


# ---------------------------------------------------------------------------------------------
# Programs and modules


@pytest.mark.parametrize("ops_", [("shuffle", "negpos", "ffx"), ("negpos", "ffx"), ("shuffle",)], ids="+".join)
@pytest.mark.parametrize("integer_input", [True, False])
def test_program_writes_its_last_launch_into_out(ops_, integer_input):
    keys = [kpfast.KeySet.generate(4), kpfast.KeySet.generate(4)]
    program = plan.compile(keys, ops_, integer_input=integer_input, dtype=torch.bfloat16, rounding="nearest")
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    if not integer_input:
        x = x.float() / 255
    key_index = torch.tensor([1, 0, 0, 1])
    out = buffer(x.shape, program.output_dtype(x), "window")
    assert program(x, key_index, out=out) is out
    torch.testing.assert_close(out, program(x, key_index), rtol=0, atol=0)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "window"])
def test_transform_forward_and_inverse(layout):
    keys = kpfast.KeySet.generate(4)
    t = kpfast.BlockTransform(keys, ("shuffle", "negpos", "ffx"), mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.4),
                              rounding="nearest")
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    out = buffer(x.shape, torch.float32, layout)
    assert t(x, out=out) is out
    assert torch.equal(out, t(x))
    back = buffer(x.shape, torch.float32, layout)
    assert t.inverse(out, out=back) is back
    assert torch.equal(back, t.inverse(out))
    # One CHW image, into a CHW buffer.
    image, single = x[0], torch.empty(3, 8, 8)
    assert t(image, out=single) is single
    assert torch.equal(single, t(image))


def test_transform_refuses_bad_buffers():
    t = kpfast.BlockTransform(kpfast.KeySet.generate(4))
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    xf = torch.rand(2, 3, 8, 8)
    cases = [
        (x, [[0.0]], TypeError, "out must be a tensor"),
        (x, torch.empty(2, 3, 8, 4), DataError, r"out has shape \(2, 3, 8, 4\) but the transform's output has the images' shape"),
        (x[0], torch.empty(1, 3, 8, 8), DataError, r"out has shape \(1, 3, 8, 8\) but .* shape \(3, 8, 8\)"),
        (x, torch.empty(2, 3, 8, 8, dtype=torch.float16), DataError, "out is torch.float16 but the transform outputs torch.float32"),
        (xf.double(), torch.empty(2, 3, 8, 8), DataError, "outputs torch.float64 for torch.float64 images"),
        (x, torch.empty(2, 3, 8, 8, device="meta"), ConfigError, "out is on meta but the images are on cpu"),
        (xf, xf, DataError, "out shares memory with the images"),
        (xf.clone().requires_grad_(), torch.empty(2, 3, 8, 8), ConfigError, "out= records no gradient, but the images require grad"),
        (x, torch.empty(2, 3, 8, 8, requires_grad=True), ConfigError, "but out requires grad"),
    ]
    for images, out, error, match in cases:
        with pytest.raises(error, match=match):
            t(images, out=out)
    with torch.no_grad():  # no gradient needed: fine
        t(xf, out=torch.empty(2, 3, 8, 8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs a CUDA device")
def test_pinned_buffer():
    t = kpfast.BlockTransform(kpfast.KeySet.generate(4))
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    out = torch.empty(x.shape, pin_memory=True)
    assert t(x, out=out) is out and out.is_pinned()
    assert torch.equal(out, t(x))
    assert torch.equal(out.to("cuda", non_blocking=True).cpu(), t(x))
