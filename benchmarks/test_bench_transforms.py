"""pytest-benchmark: the fused transform, the reference-style peer and the uint8 -> float32 copy.

    python -m pytest benchmarks -q --benchmark-columns=median,ops     (a table: `kpfast bench`)
"""
import pytest
import torch

import kpfast
from kpfast.bench import CASES, CHAIN, IMAGENET_MEAN, IMAGENET_STD
from kpfast.reference import reference_transform


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c.name}-M{c.block_size}")
def case(request):
    c = request.param
    keys = kpfast.KeySet.generate(c.block_size)
    x = torch.randint(0, 256, (c.batch, 3, c.size, c.size), dtype=torch.uint8)
    return keys, x


def test_kpfast(benchmark, case):
    keys, x = case
    t = kpfast.BlockTransform(keys, CHAIN, IMAGENET_MEAN, IMAGENET_STD)
    benchmark(t, x)


def test_peer(benchmark, case):
    keys, x = case
    benchmark.pedantic(reference_transform, (x, keys, CHAIN, IMAGENET_MEAN, IMAGENET_STD), rounds=3)


def test_copy_floor(benchmark, case):
    _, x = case
    benchmark(lambda: torch.empty(x.shape).copy_(x))
