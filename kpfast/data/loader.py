"""`DeviceLoader`: batches of an `ImageSet` that lives whole on the training device; and the epoch
plan every kpfast training loader follows (one seed-shared order, global batches, a share per rank)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from ..engine.ranks import Ranks
from ..errors import ConfigError
from .augment import crop_u8
from .imageset import ImageSet


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator seeded from (seed, epoch) well mixed: epochs are independent and any one can
    be replayed alone, on any device and any number of ranks."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def check_shardable(batch_size: int, ranks: Ranks) -> int:
    """This rank's share of a global batch (`batch_size` must split evenly over the ranks)."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be positive, got {batch_size}")
    if batch_size % ranks.world_size:
        raise ConfigError(f"the batch size {batch_size} is the global batch of all {ranks.world_size} ranks and must "
                          f"split evenly over them; use a multiple of {ranks.world_size}")
    return batch_size // ranks.world_size


def num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else -(-n // batch_size)


def global_batches(order: torch.Tensor, batch_size: int, drop_last: bool, ranks: Ranks) -> Iterator[torch.Tensor]:
    """The epoch's global batches of `order` (the same on every rank). A last, partial batch that
    does not split evenly over the ranks is padded with the epoch's first images (as
    DistributedSampler does), so that every rank takes the same number of images in every step."""
    n = len(order)
    for i in range(num_batches(n, batch_size, drop_last)):
        idx = order[i * batch_size:(i + 1) * batch_size]
        pad = -len(idx) % ranks.world_size
        if pad:
            idx = torch.cat([idx, order[torch.arange(pad, device=order.device) % n]])
        yield idx


def rank_share(size: int, ranks: Ranks) -> slice:
    """This rank's contiguous share of a global batch of `size` (a multiple of the world size)."""
    share = size // ranks.world_size
    return slice(ranks.rank * share, (ranks.rank + 1) * share)


class DeviceLoader:
    """Iterate `(x, y)` batches, x uint8 [B, C, H, W] and y int64 [B], on `device`.

    The images are moved to `device` once; batches are gathered and (with `augment`)
    randomly cropped (zero padding `padding`) and flipped there, for the whole batch at
    once. A DataLoader with workers would only add copies for data this small.

    Epochs: every `iter(loader)` yields the next epoch (0, 1, 2, ...) and its shuffle and
    augmentation depend only on `(seed, epoch)`, drawn on a CPU generator, so CPU and CUDA
    give identical batches. To resume at epoch e, call `set_epoch(e)` before iterating.

    Ranks: with `ranks` of a distributed job, `batch_size` is the global batch and each rank
    yields its share of it (`batch_size / world_size` images): every rank draws the same order
    and the same augmentation for the whole global batch and keeps its part, so the union of the
    ranks' batches at step i is the single-process loader's batch i (a last batch that does not
    split evenly is padded with the epoch's first images: see `global_batches`).
    """

    def __init__(self, imageset: ImageSet, batch_size: int, *, device: str | torch.device = "cpu",
                 shuffle: bool = True, augment: bool = False, drop_last: bool = False,
                 seed: int = 0, padding: int = 4, ranks: Ranks | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.ranks = ranks or Ranks()
        self.local_batch_size = check_shardable(batch_size, self.ranks)
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
        return num_batches(len(self.labels), self.batch_size, self.drop_last)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, self.epoch = self.epoch, self.epoch + 1  # advance now, not at the first batch
        return self._batches(epoch)

    def _batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = epoch_generator(self.seed, epoch)
        n = len(self.labels)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        for idx in global_batches(order.to(self.device), self.batch_size, self.drop_last, self.ranks):
            mine = rank_share(len(idx), self.ranks)
            x = self.images[idx[mine]]
            if self.augment:  # drawn for the whole global batch, in the order of random_crop_u8 and random_flip_u8
                offsets = torch.randint(0, 2 * self.padding + 1, (len(idx), 2), generator=gen)
                flip = (torch.rand(len(idx), generator=gen) < 0.5)[mine].to(x.device)
                x = crop_u8(x, self.padding, offsets[mine])
                x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            yield x, self.labels[idx[mine]]
