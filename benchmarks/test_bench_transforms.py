"""pytest-benchmark: the fused transform, the reference-style peer and the uint8 -> float32 copy;
the functional forms against the module; bulk key generation for key searches.

    python -m pytest benchmarks -q --benchmark-columns=median,ops     (a table: `kpfast bench`)
"""
import time

import pytest
import torch

import kpfast
from kpfast import functional as F
from kpfast.data.stats import IMAGENET
from kpfast.report.bench import CASES, CHAIN
from peer import reference_transform


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c.name}-M{c.block_size}")
def case(request):
    c = request.param
    keys = kpfast.KeySet.generate(c.block_size)
    x = torch.randint(0, 256, (c.batch, 3, c.size, c.size), dtype=torch.uint8)
    return keys, x


def test_kpfast(benchmark, case):
    keys, x = case
    t = kpfast.BlockTransform(keys, CHAIN, IMAGENET.mean, IMAGENET.std)
    t(x)  # compiled on first use
    benchmark(t, x)


def test_peer(benchmark, case):
    keys, x = case
    benchmark.pedantic(reference_transform, (x, keys, CHAIN, IMAGENET.mean, IMAGENET.std), rounds=3)


def test_copy_floor(benchmark, case):
    _, x = case
    benchmark(lambda: torch.empty(x.shape).copy_(x))


# --- kpfast.functional.ffx(x, keys) against FFX(keys)(x): goal within 2x per call -----------------

FUNCTIONAL_BATCH = (64, 3, 32, 32)  # a CIFAR-10 batch: small enough that per-call overhead shows


@pytest.fixture(scope="module", params=[4, 32], ids=lambda M: f"M{M}")
def ffx_case(request):
    keys = kpfast.KeySet.generate(request.param)
    x = torch.randint(0, 256, FUNCTIONAL_BATCH, dtype=torch.uint8)
    module = kpfast.FFX(keys)
    assert torch.equal(F.ffx(x, keys), module(x))  # both compiled, and the same
    return keys, x, module


def test_ffx_module(benchmark, ffx_case):
    keys, x, module = ffx_case
    benchmark.group = f"ffx M={keys.block_size}"
    benchmark(module, x)


def test_ffx_functional(benchmark, ffx_case):
    keys, x, _ = ffx_case
    benchmark.group = f"ffx M={keys.block_size}"
    benchmark(F.ffx, x, keys)


def test_ffx_functional_within_2x_of_the_module(ffx_case):
    """100 calls of each, interleaved, best of 11 rounds, one thread (the comparison is of the
    per-call overhead; thread contention on a busy machine would only add noise): the functional
    form compiles its Program once and then costs a cache lookup instead of a module call."""
    keys, x, module = ffx_case

    def hundred(f):
        start = time.perf_counter()
        for _ in range(100):
            f()
        return (time.perf_counter() - start) / 100

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        module_s, functional_s = [], []
        for _ in range(11):
            module_s.append(hundred(lambda: module(x)))
            functional_s.append(hundred(lambda: F.ffx(x, keys)))
    finally:
        torch.set_num_threads(threads)
    ratio = min(functional_s) / min(module_s)
    print(f"\nM={keys.block_size}: module {1e3 * min(module_s):.3f} ms/call, functional "
          f"{1e3 * min(functional_s):.3f} ms/call, ratio {ratio:.2f}")
    assert ratio < 2


# --- bulk key generation ------------------------------------------------------------------------

def test_generate_many_20000_keys(benchmark):
    """20,000 shuffle-search keys (M = 4, C = 3) from the CSPRNG: goal well under a second."""
    keys = benchmark.pedantic(kpfast.KeySet.generate_many, (20_000, 4), rounds=5)
    assert len(keys) == 20_000


@pytest.mark.parametrize("num_keys", [1, 32])
def test_forward_only_transform_build_and_first_call(benchmark, num_keys):
    """What a key search pays per candidate set: build a transform of K keys and protect one batch
    (the forward uint8 program only; the FFX tables are derived beforehand, once per password)."""
    keys = kpfast.KeySet.generate_many(num_keys, 4)
    for k in keys:
        k.ffx_lut
    x = torch.randint(0, 256, (num_keys, 3, 32, 32), dtype=torch.uint8)
    key_index = torch.arange(num_keys) if num_keys > 1 else None
    benchmark(lambda: kpfast.BlockTransform(keys, CHAIN)(x, key_index))
