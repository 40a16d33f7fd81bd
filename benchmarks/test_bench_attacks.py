"""pytest-benchmark: what a key search costs per candidate, batched and in the reference-style loop,
and the known-plaintext attack on one pair. The side-by-side speed-up table is
benchmarks/attack_speed.py; ratios are never asserted here.

    python -m pytest benchmarks/test_bench_attacks.py -q --benchmark-columns=median,ops
"""
import numpy as np
import pytest
import torch

from kpfast import BlockTransform, KeySet
from kpfast.models import create_model
from kpfast.protection import ProtectedModel
from kpfast.protection.attacks import known_plaintext, random_key_search
from kpfast.protection.attacks.scoring import candidate_keys, score, stolen_from

CHAIN = ("shuffle", "negpos", "ffx")


@pytest.fixture(scope="module")
def setup():
    """An untrained small CNN behind a fresh key (the cost does not depend on the weights), a
    CIFAR-sized batch of 64 labelled images and 512 candidate keys."""
    torch.manual_seed(0)
    key = KeySet.generate(4, 3, rng=np.random.default_rng(0))
    stolen = stolen_from(ProtectedModel(create_model("small_cnn", 10, 3),
                                        BlockTransform(key, CHAIN, (0.5,) * 3, (0.25,) * 3)).eval())
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (64,), generator=g)
    return stolen, key, x, y, candidate_keys(512, 4, 3, np.random.default_rng(2))


def test_reference_loop_8_keys(benchmark, setup):
    """8 keys the reference's way: a fresh key object, a fresh transform, one model call each."""
    stolen, _, x, y, keys = setup

    def loop():
        with torch.inference_mode():
            for k in keys[:8]:
                fresh = KeySet.from_tables(k.perm, k.np_mask, k.ffx_mask, k.ffx_lut, block_size=4, channels=3)
                stolen.network(stolen.transform(fresh)(x)).argmax(1)

    benchmark.pedantic(loop, rounds=3)


def test_batched_scoring_64_keys(benchmark, setup):
    """64 keys x 64 images in launches of 1024 images."""
    stolen, _, x, y, keys = setup
    benchmark.pedantic(score, (stolen, keys[:64], x, y), rounds=3)


def test_halving_search_512_keys(benchmark, setup):
    stolen, _, x, y, keys = setup
    benchmark.pedantic(random_key_search, (stolen, x, y, x[:16], y[:16]), {"keys": keys, "batch": 64}, rounds=3)


def test_known_plaintext_one_pair(benchmark, setup):
    stolen, key, x, y, _ = setup
    with torch.inference_mode():
        protected = stolen.transform(key)(x[:1])
    benchmark.pedantic(known_plaintext, (stolen, x[:1], protected, x[:16], y[:16]), rounds=3)
