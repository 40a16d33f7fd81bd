"""The benchmark's peer computes the same thing as the independent reference, so the speed
comparison compares equal work."""
import numpy as np
import torch

import kpfast
import reference as ref
from kpfast.bench import CHAIN, IMAGENET_MEAN, IMAGENET_STD
from kpfast.reference import reference_transform


def test_peer_equals_the_numpy_reference():
    keys = kpfast.KeySet.generate(4)
    x = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    got = reference_transform(x, keys, CHAIN, IMAGENET_MEAN, IMAGENET_STD)
    want = ref.transform(x.numpy(), keys, CHAIN, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    np.testing.assert_array_equal(got.numpy(), want)
