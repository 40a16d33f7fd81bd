"""The CUDA kernels of kpfast::block_lut and kpfast::block_affine against the CPU op, bit for bit.

Every comparison runs on two backends:

* ``cuda``: the ops on a CUDA device (only where torch.cuda.is_available());
* ``host``: the CUDA kernels' own element code (csrc/kernels/block_groups.h: the packing of the
  per-key data, the traversal of the output in groups, the vector packing of the stores), compiled
  for the host by the C++ compiler and run on the CPU for every group of a launch
  (csrc/testing/kernels_on_host.cpp, built once with torch.utils.cpp_extension and cached in its
  extensions folder). So the CUDA path's index math is tested on every machine; it does not
  replace a GPU run (device intrinsics, shared memory, streams).

Inputs are fresh random data on every run; set KPFAST_TEST_SEED to replay a failure (the seed is
in every assertion message). The op inputs are built here directly (src, table_id, tables, params,
key_index), so these tests need nothing of kpfast but its ops.

Tests whose names contain "device_assert" kill their CUDA context on purpose (in a subprocess) and
those with "large" need about 7 GB: leave both out under compute-sanitizer (-k "not device_assert
and not large").
"""

import functools
import os
import pathlib
import random
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch
from torch.utils import cpp_extension

import kpfast  # noqa: F401  (registers the ops)

SEED = int(os.environ.get("KPFAST_TEST_SEED", random.randrange(2**31)))
CUDA = torch.device("cuda")
FLOATS = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
LAYOUTS = ["contiguous", "channels_last", "slice", "transpose", "expand"]
CSRC = pathlib.Path(__file__).resolve().parent.parent / "csrc"



def without_scrambling(op, arity):
    """The raw op with block_src (its last argument, which has no default) None when left out."""
    def call(*args, **kwargs):
        return op(*args, None, **kwargs) if len(args) == arity - 1 else op(*args, **kwargs)
    call.out = op.out
    return call


lut_op = without_scrambling(torch.ops.kpfast.block_lut, 9)
affine_op = without_scrambling(torch.ops.kpfast.block_affine, 6)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@functools.cache
def kernels_on_host():
    """torch.ops.kpfast_on_host: the CUDA kernels' element code compiled for the host (with the
    sanitizers of scripts/sanitize.sh when it runs the tests)."""
    sanitize = os.environ.get("KPFAST_SANITIZE_FLAGS", "").split()
    cpp_extension.load(name="kpfast_kernels_on_host" + ("_sanitized" if sanitize else ""),
                       sources=[str(CSRC / "testing" / "kernels_on_host.cpp")], extra_include_paths=[str(CSRC)],
                       extra_cflags=["-O2", "-ffp-contract=off", *sanitize], extra_ldflags=sanitize,
                       is_python_module=False)
    return torch.ops.kpfast_on_host


@dataclass(frozen=True)
class Backend:
    """Where the kernels under test run, and their ops (the schemas of torch.ops.kpfast)."""
    device: torch.device
    lut: object
    affine: object


@pytest.fixture(scope="module", params=["cuda", "host"])
def backend(request):
    if request.param == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA device")
        return Backend(CUDA, lut_op, affine_op)
    ops = kernels_on_host()
    return Backend(torch.device("cpu"), without_scrambling(ops.block_lut, 9), without_scrambling(ops.block_affine, 6))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(SEED)


# ----------------------------------------------------------------------------------------------
# Helpers


def assert_same(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Same dtype, shape, memory format and bits (NaN payloads aside: c10 and CUDA differ there)."""
    msg = f"(KPFAST_TEST_SEED={SEED})"
    assert (actual.dtype, actual.shape) == (expected.dtype, expected.shape), msg
    assert actual.stride() == expected.stride(), f"memory format differs {msg}"
    a = actual.cpu()
    nan_a, nan_e = a.isnan(), expected.isnan()
    assert torch.equal(nan_a, nan_e), f"NaN positions differ {msg}"
    bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    a_bits, e_bits = a.masked_fill(nan_a, 0).view(bits), expected.masked_fill(nan_e, 0).view(bits)
    bad = (a_bits != e_bits).nonzero()
    assert bad.numel() == 0, (
        f"{bad.shape[0]} of {a.numel()} elements differ, first at {bad[0].tolist()}: "
        f"kernel {a[tuple(bad[0])].item()!r} vs cpu op {expected[tuple(bad[0])].item()!r} {msg}"
    )


def special_values(dtype: torch.dtype) -> torch.Tensor:
    """NaN, infinities, signed zeros, out-of-range values and level boundaries of 1/255."""
    vals = [float("nan"), float("inf"), -float("inf"), -0.0, 0.0, -1.5, -1e-30, 1.0, 2.0, 1e30]
    vals += [k / 255 for k in (0, 1, 127, 128, 254, 255)] + [(k + 0.5) / 255 for k in (0, 100, 254)]
    return torch.tensor(vals, dtype=torch.float64).to(dtype)


def make_images(dtype, N, C, H, W, layout="contiguous", special=False, device=CUDA):
    """The same image batch on the CPU and on `device` (a copy of its own), with the same strides."""
    if dtype == torch.uint8:
        base = torch.randint(0, 256, (N, C + 1, H + 2, W + 3), dtype=torch.uint8)
    else:
        base = (torch.rand(N, C + 1, H + 2, W + 3, dtype=torch.float64) * 1.5 - 0.25).to(dtype)
        if special and base.numel() > 0:
            s = special_values(dtype)
            flat = base.view(-1)
            flat[torch.randint(0, flat.numel(), (4 * len(s),))] = s.repeat(4)

    def view(b):
        x = b[:, 1:, 1:H + 1, 2:W + 2]  # a non-contiguous window
        if layout == "slice":
            return x
        if layout == "transpose":  # H and W strides swapped in memory
            return x.transpose(2, 3).contiguous().transpose(2, 3)
        if layout == "expand":  # one image repeated: batch stride 0
            return x[:1].expand(N, C, H, W) if N > 0 else x
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        return x.contiguous(memory_format=fmt)

    return view(base), view(base.to(device, copy=True))


def random_src(K, L):
    return torch.stack([torch.randperm(L) for _ in range(K)])


def lut_keys(K, L, T, V, table_dtype):
    src = random_src(K, L)
    table_id = torch.randint(0, T, (K, L))
    tables = torch.randn(T, V, dtype=torch.float64).to(table_dtype)
    return src, table_id, tables


def check_lut(backend, x_cpu, x_dev, src, table_id, tables, M, qscale=255.0, rounding="floor", key_index=None):
    expected = lut_op(x_cpu, src, table_id, tables, M, qscale, rounding, key_index)
    keys = on_device(backend, src, table_id, tables, key_index)
    return check_same(backend.lut(x_dev, *keys[:3], M, qscale, rounding, keys[3]), expected, x_dev)


def check_affine(backend, x_cpu, x_dev, src, params, M, key_index=None):
    expected = affine_op(x_cpu, src, params, M, key_index)
    keys = on_device(backend, src, params, key_index)
    return check_same(backend.affine(x_dev, *keys[:2], M, keys[2]), expected, x_dev)


def on_device(backend, *tensors):
    return [None if t is None else t.to(backend.device) for t in tensors]


def check_same(actual, expected, x_dev):
    assert actual.device == x_dev.device
    assert_same(actual, expected)
    return actual


def image_size(M, C):
    """(H, W): rows of whole vector groups for C = 1 and 4 (the vectorised kernels), rows of odd
    lengths for C = 3 and NCHW (the one-output-per-thread kernels)."""
    return (M, 16 * M) if C != 3 else (2 * M, 3 * M)


# ----------------------------------------------------------------------------------------------
# The build


@needs_cuda
def test_cuda_kernels_are_built():
    """Not skipped on a CUDA machine: a kpfast built without its CUDA kernels fails here, loudly."""
    missing = [op for op in ("kpfast::block_lut", "kpfast::block_affine")
               if not torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA")]
    assert not missing, (
        f"kpfast has no CUDA kernel for {missing}: it was built without CUDA. Rebuild on this machine "
        "with: KPFAST_CUDA=ON pip install --no-build-isolation --no-deps -e ."
    )


# ----------------------------------------------------------------------------------------------
# block_lut


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "slice"])
@pytest.mark.parametrize("table_dtype", FLOATS, ids=str)
@pytest.mark.parametrize("in_dtype", [torch.uint8] + FLOATS, ids=str)
def test_lut_dtypes(backend, in_dtype, table_dtype, layout):
    N, C, H, W, M = 3, 3, 8, 32, 4
    L = M * M * C
    x_cpu, x_dev = make_images(in_dtype, N, C, H, W, layout, special=True, device=backend.device)
    src, table_id, tables = lut_keys(1, L, 6, 256, table_dtype)
    for rounding in ("floor", "nearest"):
        check_lut(backend, x_cpu, x_dev, src, table_id, tables, M, 255.0, rounding)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transpose"])
@pytest.mark.parametrize("N", [0, 1, 3, 5])
@pytest.mark.parametrize("C", [1, 3, 4])
@pytest.mark.parametrize("M", [1, 2, 4, 8, 16, 32])
def test_lut_geometry(backend, M, C, N, layout):
    H, W = image_size(M, C)
    L = M * M * C
    for in_dtype, table_dtype in [(torch.uint8, torch.float16), (torch.float32, torch.bfloat16)]:
        x_cpu, x_dev = make_images(in_dtype, N, C, H, W, layout, device=backend.device)
        src, table_id, tables = lut_keys(1, L, 6, 256, table_dtype)
        check_lut(backend, x_cpu, x_dev, src, table_id, tables, M)


@pytest.mark.parametrize("rounding", ["floor", "nearest"])
@pytest.mark.parametrize("in_dtype", FLOATS, ids=str)
def test_lut_float_levels(backend, in_dtype, rounding):
    """Special values and levels on, next to and between the lattice points, with 256- and
    1000-entry tables (the quantisation is kpfast::quantize on both devices)."""
    N, C, H, W, M = 2, 3, 16, 16, 2
    L = M * M * C
    x_cpu, x_dev = make_images(in_dtype, N, C, H, W, "contiguous", special=True, device=backend.device)
    for V, qscale in [(256, 255.0), (1000, 999.0), (1000, 255.0), (256, 1000.0)]:
        src, table_id, tables = lut_keys(1, L, 3, V, torch.float32)
        check_lut(backend, x_cpu, x_dev, src, table_id, tables, M, qscale, rounding)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_lut_many_keys(backend, layout):
    N, C, H, W, M, K = 9, 3, 16, 32, 4, 4
    L = M * M * C
    key_index = torch.tensor([3, 0, 1, 2, 2, 0, 3, 3, 1])
    for in_dtype in (torch.uint8, torch.float32):
        x_cpu, x_dev = make_images(in_dtype, N, C, H, W, layout, device=backend.device)
        src, table_id, tables = lut_keys(K, L, 2 * K, 256, torch.float16)
        check_lut(backend, x_cpu, x_dev, src, table_id, tables, M, key_index=key_index)
        # Tables too big for shared memory take the global-memory path.
        src, table_id, tables = lut_keys(K, L, 64, 256, torch.float32)
        check_lut(backend, x_cpu, x_dev, src, table_id, tables, M, key_index=key_index)


@needs_cuda
def test_lut_on_a_side_stream():
    N, C, H, W, M = 4, 3, 32, 32, 4
    x_cpu, x_cuda = make_images(torch.uint8, N, C, H, W)
    src, table_id, tables = lut_keys(1, M * M * C, 6, 256, torch.float16)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        actual = lut_op(x_cuda, src.to(CUDA), table_id.to(CUDA), tables.to(CUDA), M, 255.0, "floor", None)
    stream.synchronize()
    assert_same(actual, lut_op(x_cpu, src, table_id, tables, M, 255.0, "floor", None))


# ----------------------------------------------------------------------------------------------
# block_affine


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_affine_dtypes(backend, dtype, layout):
    N, C, H, W, M = 3, 3, 8, 32, 4
    L = M * M * C
    x_cpu, x_dev = make_images(dtype, N, C, H, W, layout, special=True, device=backend.device)
    # General parameters: the product must be rounded on its own (no FMA) to match the CPU.
    check_affine(backend, x_cpu, x_dev, random_src(1, L), torch.randn(1, 4, L, dtype=torch.float64), M)
    # The parameters of real chains: shuffle/NP (scale +-1, bias 0/1) and CIFAR-10 Normalize.
    params = torch.empty(1, 4, L, dtype=torch.float64)
    np_mask = torch.rand(L) < 0.5
    params[0, 0] = torch.where(np_mask, -1.0, 1.0)
    params[0, 1] = np_mask.double()
    params[0, 2] = torch.tensor([0.4914, 0.4822, 0.4465], dtype=torch.float64).repeat(L // C)
    params[0, 3] = torch.tensor([0.2471, 0.2435, 0.2616], dtype=torch.float64).repeat(L // C)
    check_affine(backend, x_cpu, x_dev, random_src(1, L), params, M)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transpose"])
@pytest.mark.parametrize("N", [0, 1, 3, 5])
@pytest.mark.parametrize("C", [1, 3, 4])
@pytest.mark.parametrize("M", [1, 2, 4, 8, 16, 32])
def test_affine_geometry(backend, M, C, N, layout):
    H, W = image_size(M, C)
    L = M * M * C
    for dtype in (torch.float32, torch.bfloat16):
        x_cpu, x_dev = make_images(dtype, N, C, H, W, layout, device=backend.device)
        check_affine(backend, x_cpu, x_dev, random_src(1, L), torch.randn(1, 4, L, dtype=torch.float64), M)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "slice"])
def test_affine_many_keys(backend, layout):
    N, C, H, W, M, K = 9, 3, 16, 32, 4, 4
    L = M * M * C
    key_index = torch.tensor([3, 0, 1, 2, 2, 0, 3, 3, 1])
    for dtype in (torch.float32, torch.float16, torch.float64):
        x_cpu, x_dev = make_images(dtype, N, C, H, W, layout, device=backend.device)
        params = torch.randn(K, 4, L, dtype=torch.float64)
        check_affine(backend, x_cpu, x_dev, random_src(K, L), params, M, key_index=key_index)


# ----------------------------------------------------------------------------------------------
# Block scrambling and out= (the source block of each output block; the buffer the kernels write)


def random_block_src(K, B, permutation=True):
    return torch.stack([torch.randperm(B) for _ in range(K)]) if permutation else torch.randint(0, B, (K, B))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "slice"])
@pytest.mark.parametrize("M, C", [(1, 3), (2, 4), (4, 3), (4, 1), (8, 3)])
def test_scrambled(backend, M, C, layout):
    """Vectorised groups (C = 1, 4) and one output per group (C = 3), several rows of blocks."""
    H, W = image_size(M, C)
    H *= 2
    N, K, L, B = 3, 2, M * M * C, (H // M) * (W // M)
    key_index = torch.tensor([1, 0, 1])
    for permutation in (True, False):
        block_src = random_block_src(K, B, permutation)
        for in_dtype, table_dtype in [(torch.uint8, torch.float16), (torch.float32, torch.bfloat16),
                                      (torch.float64, torch.float32)]:
            x_cpu, x_dev = make_images(in_dtype, N, C, H, W, layout, special=True, device=backend.device)
            src, table_id, tables = lut_keys(K, L, 6, 256, table_dtype)
            expected = lut_op(x_cpu, src, table_id, tables, M, 255.0, "nearest", key_index, block_src)
            keys = on_device(backend, src, table_id, tables, key_index, block_src)
            check_same(backend.lut(x_dev, *keys[:3], M, 255.0, "nearest", *keys[3:]), expected, x_dev)
            if in_dtype != torch.uint8:
                params = torch.randn(K, 4, L, dtype=torch.float64)
                expected = affine_op(x_cpu, src, params, M, key_index, block_src)
                keys = on_device(backend, src, params, key_index, block_src)
                check_same(backend.affine(x_dev, *keys[:2], M, *keys[2:]), expected, x_dev)


def out_buffer(shape, dtype, layout, device):
    """A buffer the kernels write in place (dense, aligned or not) or through a copy (a window)."""
    N, C, H, W = shape
    if layout == "window":
        return torch.full((N, C + 1, H, W + 1), float("nan"), dtype=dtype, device=device)[:, 1:, :, 1:]
    if layout == "unaligned":  # dense but off the 16-byte alignment of vector stores
        return torch.full((N * C * H * W + 1,), float("nan"), dtype=dtype, device=device)[1:].view(shape)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    return torch.full(shape, float("nan"), dtype=dtype, device=device).contiguous(memory_format=fmt)


@pytest.mark.parametrize("out_layout", ["contiguous", "channels_last", "unaligned", "window"])
@pytest.mark.parametrize("in_layout", ["contiguous", "channels_last"])
def test_out(backend, in_layout, out_layout):
    N, C, H, W, M, K = 3, 4, 8, 32, 4, 2
    L, B = M * M * C, (H // M) * (W // M)
    key_index, block_src = torch.tensor([1, 0, 1]), random_block_src(K, B)
    for in_dtype, table_dtype in [(torch.uint8, torch.float32), (torch.float16, torch.bfloat16)]:
        x_cpu, x_dev = make_images(in_dtype, N, C, H, W, in_layout, device=backend.device)
        src, table_id, tables = lut_keys(K, L, 6, 256, table_dtype)
        expected = lut_op(x_cpu, src, table_id, tables, M, 255.0, "floor", key_index, block_src)
        keys = on_device(backend, src, table_id, tables, key_index, block_src)
        out = out_buffer(x_dev.shape, table_dtype, out_layout, backend.device)
        assert backend.lut.out(x_dev, *keys[:3], M, 255.0, "floor", *keys[3:], out=out) is out
        torch.testing.assert_close(out.cpu(), expected, rtol=0, atol=0)
        if in_dtype != torch.uint8:
            params = torch.randn(K, 4, L, dtype=torch.float64)
            expected = affine_op(x_cpu, src, params, M, key_index, block_src)
            keys = on_device(backend, src, params, key_index, block_src)
            out = out_buffer(x_dev.shape, in_dtype, out_layout, backend.device)
            assert backend.affine.out(x_dev, *keys[:2], M, *keys[2:], out=out) is out
            torch.testing.assert_close(out.cpu(), expected, rtol=0, atol=0)


@needs_cuda
def test_pinned_out_and_wrong_device():
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    src, table_id, tables = lut_keys(1, 48, 2, 256, torch.float32)
    pinned = torch.empty(x.shape, pin_memory=True)
    assert lut_op.out(x, src, table_id, tables, 4, 255.0, "floor", None, out=pinned) is pinned
    assert torch.equal(pinned, lut_op(x, src, table_id, tables, 4, 255.0, "floor", None))
    with pytest.raises(RuntimeError, match="out is on cpu but the images are on cuda"):
        lut_op.out(x.to(CUDA), src.to(CUDA), table_id.to(CUDA), tables.to(CUDA), 4, 255.0, "floor", None, out=pinned)


# ----------------------------------------------------------------------------------------------
# opcheck, CUDA graphs, several GPUs


@needs_cuda
def test_opcheck():
    N, C, H, W, M, K = 3, 3, 8, 8, 2, 2
    L = M * M * C
    x = torch.randint(0, 256, (N, C, H, W), dtype=torch.uint8, device=CUDA)
    xf = torch.rand(N, C, H, W, device=CUDA).contiguous(memory_format=torch.channels_last)
    src, table_id, tables = (t.to(CUDA) for t in lut_keys(K, L, 4, 256, torch.float16))
    params = torch.randn(K, 4, L, dtype=torch.float64, device=CUDA)
    key_index = torch.tensor([1, 0, 1], device=CUDA)
    for args in [(x, src[:1], table_id[:1], tables, M, 255.0, "floor", None),
                 (xf, src, table_id, tables, M, 255.0, "nearest", key_index)]:
        torch.library.opcheck(lut_op.default, args)
    for args in [(xf, src[:1], params[:1], M, None), (xf, src, params, M, key_index)]:
        torch.library.opcheck(affine_op.default, args)
    block_src = random_block_src(K, (H // M) * (W // M)).to(CUDA)
    torch.library.opcheck(lut_op.default, (x, src, table_id, tables, M, 255.0, "floor", key_index, block_src))
    torch.library.opcheck(affine_op.out, (xf, src, params, M, key_index, block_src), {"out": torch.empty_like(xf)})


@needs_cuda
@pytest.mark.skipif(bool(os.environ.get("PYTORCH_NO_CUDA_MEMORY_CACHING")),
                    reason="CUDA graphs need the caching allocator")
def test_cuda_graph_capture_and_replay():
    N, C, H, W, M, K = 4, 3, 32, 32, 4, 2
    L = M * M * C
    key_index = torch.tensor([1, 0, 0, 1])
    src, table_id, tables = lut_keys(K, L, 6, 256, torch.float16)
    params = torch.randn(K, 4, L, dtype=torch.float64)
    keys = [t.to(CUDA) for t in (src, table_id, tables, params, key_index)]
    x_static = torch.zeros(N, C, H, W, dtype=torch.uint8, device=CUDA)
    xf_static = torch.zeros(N, C, H, W, device=CUDA).contiguous(memory_format=torch.channels_last)

    def step():
        s, t, tab, p, ki = keys
        return lut_op(x_static, s, t, tab, M, 255.0, "floor", ki), affine_op(xf_static, s, p, M, ki)

    side = torch.cuda.Stream()  # warm up outside the capture, as torch.cuda.graphs advises
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out_lut, out_affine = step()

    for _ in range(3):
        x = torch.randint(0, 256, (N, C, H, W), dtype=torch.uint8)
        xf = torch.rand(N, C, H, W).contiguous(memory_format=torch.channels_last)
        x_static.copy_(x)
        xf_static.copy_(xf)
        graph.replay()
        torch.cuda.synchronize()
        assert_same(out_lut, lut_op(x, src, table_id, tables, M, 255.0, "floor", key_index))
        assert_same(out_affine, affine_op(xf, src, params, M, key_index))


@needs_cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_second_device():
    dev = torch.device("cuda", 1)
    N, C, H, W, M = 2, 3, 16, 16, 4
    L = M * M * C
    x = torch.randint(0, 256, (N, C, H, W), dtype=torch.uint8)
    src, table_id, tables = lut_keys(1, L, 6, 256, torch.float32)
    actual = lut_op(x.to(dev), src.to(dev), table_id.to(dev), tables.to(dev), M, 255.0, "floor", None)
    assert actual.device == dev
    expected = lut_op(x, src, table_id, tables, M, 255.0, "floor", None)
    assert torch.equal(actual.cpu(), expected)


# ----------------------------------------------------------------------------------------------
# Errors


def _lut_args(on_cpu: str):
    N, C, H, W, M = 2, 3, 8, 8, 4
    L = M * M * C
    src, table_id, tables = lut_keys(2, L, 3, 256, torch.float32)
    args = dict(x=torch.randint(0, 256, (N, C, H, W), dtype=torch.uint8), src=src, table_id=table_id,
                tables=tables, key_index=torch.tensor([0, 1]))
    return {k: v if k == on_cpu else v.to(CUDA) for k, v in args.items()}, M


@needs_cuda
@pytest.mark.parametrize("on_cpu", ["src", "table_id", "tables", "key_index", "x"])
def test_lut_tensors_on_different_devices(on_cpu):
    a, M = _lut_args(on_cpu)
    with pytest.raises(RuntimeError, match=r"is on (cpu|cuda:\d+) but the images are on (cuda:\d+|cpu)"):
        lut_op(a["x"], a["src"], a["table_id"], a["tables"], M, 255.0, "floor", a["key_index"])


@needs_cuda
@pytest.mark.parametrize("on_cpu", ["src", "params", "key_index"])
def test_affine_tensors_on_different_devices(on_cpu):
    N, C, H, W, M = 2, 3, 8, 8, 4
    L = M * M * C
    a = dict(x=torch.rand(N, C, H, W), src=random_src(2, L), params=torch.randn(2, 4, L, dtype=torch.float64),
             key_index=torch.tensor([1, 0]))
    a = {k: v if k == on_cpu else v.to(CUDA) for k, v in a.items()}
    with pytest.raises(RuntimeError, match=r"is on cpu but the images are on cuda"):
        affine_op(a["x"], a["src"], a["params"], M, a["key_index"])


@needs_cuda
def test_cuda_checks_match_the_cpu_op():
    x = torch.randint(0, 256, (1, 3, 8, 8), dtype=torch.uint8, device=CUDA)
    src, table_id, tables = (t.to(CUDA) for t in lut_keys(1, 48, 2, 256, torch.float32))
    with pytest.raises(RuntimeError, match="divisible by the block size"):
        lut_op(x, src, table_id, tables, 3, 255.0, "floor", None)
    with pytest.raises(RuntimeError, match="rounding must be"):
        lut_op(x, src, table_id, tables, 4, 255.0, "round", None)
    with pytest.raises(RuntimeError, match="256-entry tables"):
        lut_op(x, src, table_id, tables[:, :100], 4, 255.0, "floor", None)
    with pytest.raises(RuntimeError, match="floating point images"):
        affine_op(x, src, torch.ones(1, 4, 48, dtype=torch.float64, device=CUDA), 4, None)


# A bad key value must never read out of bounds: the kernels clamp it and stop with a device-side
# assert, which leaves the CUDA context unusable, hence a subprocess per case.
_BAD_KEY_SCRIPT = """
import sys, torch, kpfast
case = sys.argv[1]
dev = "cuda"
N, C, H, W, M = 2, 3, 8, 8, 4
L = M * M * C
x = torch.randint(0, 256, (N, C, H, W), dtype=torch.uint8, device=dev)
src = torch.arange(L, device=dev).repeat(2, 1)
table_id = torch.zeros(2, L, dtype=torch.long, device=dev)
tables = torch.rand(2, 256, device=dev)
key_index = torch.tensor([0, 1], device=dev)
block_src = torch.arange(4, device=dev).repeat(2, 1)
if case == "block_src": block_src[1, 2] = 4
if case == "src_high": src[1, 5] = L
if case == "src_negative": src[0, 0] = -1
if case == "table_id": table_id[0, 7] = 2
if case == "key_index": key_index[1] = 2
if case == "affine_src":
    src[1, 3] = 10**12
    affine_op(x.float(), src, torch.ones(2, 4, L, dtype=torch.float64, device=dev), M, key_index)
else:
    torch.ops.kpfast.block_lut(x, src, table_id, tables, M, 255.0, "floor", key_index, block_src)
torch.cuda.synchronize()
print("NO ERROR")
"""


@needs_cuda
@pytest.mark.parametrize("case", ["src_high", "src_negative", "table_id", "key_index", "affine_src", "block_src"])
def test_device_assert_on_bad_key_values(case):
    r = subprocess.run([sys.executable, "-c", _BAD_KEY_SCRIPT, case], capture_output=True, text=True,
                       timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "NO ERROR" not in out, out
    assert "device-side assert" in out or "Assertion" in out, out


@needs_cuda
def test_large_batch_over_2_31_elements():
    """64-bit indexing: 2^31 + 1 Mi output elements, checked on a few images against the CPU op."""
    N, C, H, W, M, K = 683, 3, 1024, 1024, 8, 2
    need = N * C * H * W * 3 + (1 << 30)  # uint8 in, float16 out, slack
    if torch.cuda.mem_get_info()[0] < need:
        pytest.skip(f"needs {need / 2**30:.1f} GiB of free GPU memory")
    assert N * C * H * W > 2**31
    L = M * M * C
    src, table_id, tables = lut_keys(K, L, 3, 256, torch.float16)
    key_index = torch.randint(0, K, (N,))
    x = torch.randint(0, 256, (N, C, H, W), dtype=torch.uint8, device=CUDA)
    out = lut_op(x, src.to(CUDA), table_id.to(CUDA), tables.to(CUDA), M, 255.0, "floor", key_index.to(CUDA))
    for idx in ([0], [N - 2, N - 1]):
        expected = lut_op(x[idx].cpu(), src, table_id, tables, M, 255.0, "floor", key_index[idx])
        assert_same(out[idx], expected)
