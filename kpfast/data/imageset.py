"""`ImageSet`: the one container every loader in `kpfast.data` returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import ConfigError


@dataclass(frozen=True, eq=False)  # eq=False: tensors have no boolean equality
class ImageSet:
    """Images as contiguous uint8 `[N, C, H, W]`, labels as int64 `[N]`, and class names.

    `labels[i]` indexes `classes`. Kept as uint8 on purpose: the block-wise transforms are
    defined on 8-bit pixels, and uint8 is 4x smaller than float to keep on a device. The one
    exception is float32 in [0, 1]: protected FFX images read back from a `kpfast encrypt`
    folder (`kpfast.data.protected_folder`), whose codes (up to 999 levels) no byte holds.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        x, y = self.images, self.labels
        if not isinstance(x, torch.Tensor) or x.dtype not in (torch.uint8, torch.float32) or x.dim() != 4:
            raise TypeError(f"images must be a uint8 (or float32) tensor [N, C, H, W], got {_describe(x)}")
        if not x.is_contiguous():
            raise ValueError("images must be contiguous (call .contiguous() first)")
        if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.dim() != 1:
            raise TypeError(f"labels must be an int64 tensor [N], got {_describe(y)}")
        if len(y) != len(x):
            raise ValueError(f"{len(x)} images but {len(y)} labels")
        if y.device != x.device:
            raise ValueError(f"images on {x.device} but labels on {y.device}")
        if not isinstance(self.classes, tuple) or not all(isinstance(c, str) for c in self.classes):
            raise TypeError(f"classes must be a tuple of str, got {self.classes!r}")
        if not self.classes:
            raise ValueError("classes must not be empty")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(self.classes)):
            raise ValueError(
                f"labels must lie in [0, {len(self.classes)}), "
                f"got range [{int(y.min())}, {int(y.max())}]"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return (f"ImageSet(n={len(self)}, shape={tuple(self.images.shape[1:])}, "
                f"classes={len(self.classes)}, device={self.images.device})")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to(self, device: str | torch.device) -> ImageSet:
        """The set on `device` (moved once, so that batches sliced from it are views, not copies)."""
        return ImageSet(self.images.to(device), self.labels.to(device), self.classes)

    def subset(self, indices: torch.Tensor | Sequence[int] | Sequence[bool]) -> ImageSet:
        """The images at `indices` (in that order; repeats allowed) or a bool mask, as a new set."""
        idx = torch.as_tensor(indices, device=self.labels.device)
        idx = idx.nonzero().flatten() if idx.dtype == torch.bool else idx.long()
        return ImageSet(self.images[idx].contiguous(), self.labels[idx], self.classes)

    def split(self, fraction: float, seed: int = 0) -> tuple[ImageSet, ImageSet]:
        """Stratified split: the first set takes `round(fraction * n_c)` images of each class.

        Deterministic for a seed; both parts keep the original order of their images.
        """
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be in [0, 1], got {fraction}")
        gen = torch.Generator().manual_seed(seed)
        labels = self.labels.cpu()
        take = torch.zeros(len(labels), dtype=torch.bool)
        for c in range(self.num_classes):
            members = torch.nonzero(labels == c).flatten()
            chosen = members[torch.randperm(len(members), generator=gen)]
            take[chosen[: round(fraction * len(members))]] = True
        return self.subset(torch.nonzero(take).flatten()), self.subset(torch.nonzero(~take).flatten())

    def first_per_class(self, n: int) -> ImageSet:
        """The first images of each class, n in all, as balanced as n allows, in the original order.

        kpfast's one meaning of a subset (``--train-subset`` / ``--test-subset``): deterministic,
        without randomness, so a quick run always sees the same images.
        """
        if n < 1:
            raise ConfigError(f"a subset needs at least 1 image, got {n}")
        if n >= len(self):
            return self
        k = self.num_classes
        labels = self.labels.cpu()
        # Quotas n // k (+1 for the first n % k classes), capped by what each class has.
        quota = torch.full((k,), n // k, dtype=torch.int64)
        quota[: n % k] += 1
        rank = torch.zeros_like(labels)  # position of each image within its class
        for c in range(k):
            members = labels == c
            rank[members] = torch.arange(int(members.sum()))
        return self.subset(rank < quota[labels])


def _describe(t: object) -> str:
    if isinstance(t, torch.Tensor):
        return f"{t.dtype} tensor of shape {tuple(t.shape)}"
    return type(t).__name__
