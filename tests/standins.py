"""Stand-ins for the training, evaluation and checkpoint tests: a key and keyed transform (a secret
permutation of all C*H*W pixel positions after Normalize, independent of kpfast's own transforms,
so those tests check the machinery around a transform, not the transform), and a full disk."""
import errno
import hashlib
import io
import math
import os

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


class FullDisk(io.RawIOBase):
    """A file on a disk that is full after `room` more bytes: then writes fail with ENOSPC, as on a
    real full disk (patch it in for os.fdopen)."""

    def __init__(self, fd, room=0):
        self.fd, self.room = fd, room

    def writable(self):
        return True

    def write(self, data):
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return os.write(self.fd, data)

    def fileno(self):
        return self.fd

    def close(self):
        if not self.closed:
            os.close(self.fd)
        super().close()
