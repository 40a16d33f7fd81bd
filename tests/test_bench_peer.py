"""The benchmarks' reference-style peer (benchmarks/peer.py) computes the same thing as the
independent reference, so the speed comparison compares equal work."""
import sys
from pathlib import Path

import numpy as np
import torch

import kpfast
import reference as ref
from kpfast.data.stats import IMAGENET
from kpfast.report.bench import CHAIN

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from peer import reference_transform  # noqa: E402


def test_peer_equals_the_numpy_reference():
    keys = kpfast.KeySet.generate(4)
    x = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    got = reference_transform(x, keys, CHAIN, IMAGENET.mean, IMAGENET.std)
    want = ref.transform(x.numpy(), keys, CHAIN, mean=IMAGENET.mean, std=IMAGENET.std)
    np.testing.assert_array_equal(got.numpy(), want)
