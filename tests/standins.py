"""A stand-in key and keyed transform for the training, evaluation and checkpoint tests: a secret
permutation of all C*H*W pixel positions after Normalize. Independent of kpfast's own transforms,
so those tests check the machinery around a transform, not the transform."""
import hashlib
import math

from torch import nn
import torch

from kpfast.normalize import Normalize


class FakeKey:
    """Stand-in for kpfast.KeySet."""

    def __init__(self, seed: int, shape: tuple[int, int, int]) -> None:
        self.perm = torch.randperm(math.prod(shape), generator=torch.Generator().manual_seed(seed))

    def fingerprint(self) -> str:
        return hashlib.sha256(self.perm.numpy().tobytes()).hexdigest()[:16]


class PixelShuffle(nn.Module):
    """Stand-in keyed transform: normalise, then permute pixel positions with the key."""

    def __init__(self, key: FakeKey, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)) -> None:
        super().__init__()
        self.key = key
        self.norm = Normalize(mean, std)
        self.register_buffer("perm", key.perm.clone(), persistent=False)

    def forward(self, x):
        y = self.norm(x)
        return y.flatten(1)[:, self.perm].view_as(y)

    def config(self):
        return {**self.norm.config(), "type": "block"}

    def fingerprint(self):
        return self.key.fingerprint()

    @classmethod
    def from_config(cls, config, keys):
        return cls(keys, config["mean"], config["std"])
