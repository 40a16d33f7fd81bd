"""`DeviceLoader`: batches of an `ImageSet` that lives whole on the training device."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from .augment import random_crop_u8, random_flip_u8
from .imageset import ImageSet


class DeviceLoader:
    """Iterate `(x, y)` batches, x uint8 [B, C, H, W] and y int64 [B], on `device`.

    The images are moved to `device` once; batches are gathered and (with `augment`)
    randomly cropped (zero padding `padding`) and flipped there, for the whole batch at
    once. A DataLoader with workers would only add copies for data this small.

    Epochs: every `iter(loader)` yields the next epoch (0, 1, 2, ...) and its shuffle and
    augmentation depend only on `(seed, epoch)`, drawn on a CPU generator, so CPU and CUDA
    give identical batches. To resume at epoch e, call `set_epoch(e)` before iterating.
    """

    def __init__(self, imageset: ImageSet, batch_size: int, *, device: str | torch.device = "cpu",
                 shuffle: bool = True, augment: bool = False, drop_last: bool = False,
                 seed: int = 0, padding: int = 4) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.device = torch.device(device)
        self.images = imageset.images.to(self.device)
        self.labels = imageset.labels.to(self.device)
        self.classes = imageset.classes
        self.batch_size = batch_size
        self.shuffle, self.augment, self.drop_last = shuffle, augment, drop_last
        self.seed, self.padding = seed, padding
        self.epoch = 0  # the epoch the next iter() yields

    def set_epoch(self, epoch: int) -> None:
        """Make the next `iter()` yield epoch `epoch` (then epoch + 1, ...)."""
        self.epoch = epoch

    def __len__(self) -> int:
        n, b = len(self.labels), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, self.epoch = self.epoch, self.epoch + 1  # advance now, not at the first batch
        return self._batches(epoch)

    def _batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # A fresh generator per epoch, seeded from (seed, epoch) well mixed, so epochs are
        # independent and any one can be replayed alone.
        state = np.random.SeedSequence([self.seed, epoch]).generate_state(1, np.uint64)[0]
        gen = torch.Generator().manual_seed(int(state))
        n = len(self.labels)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        order = order.to(self.device)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            x = self.images[idx]
            if self.augment:
                x = random_flip_u8(random_crop_u8(x, self.padding, gen), gen)
            yield x, self.labels[idx]
