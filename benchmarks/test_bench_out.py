"""pytest-benchmark: the fused Shuffle + NP + FFX chain, uint8 -> normalised float, written with
``out=`` into an existing buffer, beside ``out.copy_(u8)`` into the same kind of buffer (the
memory-traffic floor of the conversion), both warm, in one group per batch, output dtype and thread
count: the ImageNet batch (64x3x224x224) and the CIFAR-10 batch (512x3x32x32), float32 and
bfloat16, 1 and 2 threads. The goals (issue 14): the chain within 1.5x of the copy on the ImageNet
batch and within 2x on the CIFAR-10 batch.

    python -m pytest benchmarks/test_bench_out.py -q --benchmark-columns=median,ops --benchmark-group-by=group

The same cases as one table with ratios and goal verdicts: benchmarks/out_table.py.
"""
import pytest
import torch

import kpfast
from kpfast.data.stats import IMAGENET
from kpfast.report.bench import CHAIN

BATCHES = {"ImageNet": (64, 224), "CIFAR-10": (512, 32)}


@pytest.fixture(scope="module", params=[(b, d) for b in BATCHES for d in (torch.float32, torch.bfloat16)],
                ids=lambda p: f"{p[0]}-{str(p[1]).removeprefix('torch.')}")
def case(request):
    name, dtype = request.param
    batch, size = BATCHES[name]
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    transform = kpfast.BlockTransform(kpfast.KeySet.generate(4), CHAIN, IMAGENET.mean, IMAGENET.std, dtype=dtype)
    return name, dtype, x, transform, transform(x)


@pytest.fixture(params=[1, 2], ids=lambda n: f"{n}thread")
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def _group(benchmark, case, threads):
    name, dtype, *_ = case
    benchmark.group = f"{name} {str(dtype).removeprefix('torch.')} {threads} thread(s)"


def test_transform_out(benchmark, case, threads):
    _, dtype, x, transform, expected = case
    _group(benchmark, case, threads)
    out = torch.empty(x.shape, dtype=dtype)
    transform(x, out=out)  # warm: the buffer's pages exist
    benchmark(transform, x, out=out)
    assert torch.equal(out, expected)


def test_copy(benchmark, case, threads):
    _, dtype, x, *_ = case
    _group(benchmark, case, threads)
    out = torch.empty(x.shape, dtype=dtype)
    out.copy_(x)
    benchmark(out.copy_, x)
    assert torch.equal(out, x.to(dtype))
