"""Per-channel mean and std of every data set, in one place: published values for the named data
sets, computed from the training images for anything else (an image folder or zip).

The statistics are folded into the input transform (``Normalize`` or ``BlockTransform``), whose
config every checkpoint and saved model records, so a model is always served with the statistics
it was trained with, whatever data it is evaluated on later.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .imageset import ImageSet


@dataclass(frozen=True)
class Stats:
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str  # where the numbers come from, for reports

    def as_dict(self) -> dict[str, object]:
        return {"mean": list(self.mean), "std": list(self.std), "source": self.source}


CIFAR10 = Stats((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616), "CIFAR-10 training set (published values)")
FASHION_MNIST = Stats((0.2860,), (0.3530,), "Fashion-MNIST training set (published values)")
IMAGENET = Stats((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "ImageNet training set (torchvision's values)")
# Not measured: mid-grey and a spread that keeps the generated images in a few std of 0.
SYNTHETIC = Stats((0.5,) * 3, (0.25,) * 3, "fixed for the synthetic set")

KNOWN = {"cifar10": CIFAR10, "fashion-mnist": FASHION_MNIST, "synthetic": SYNTHETIC}

_CHUNK = 4096  # images per reduction step: bounds the float64 temporaries
_MIN_STD = 1 / 255  # a channel without variation (e.g. a blank test folder) still normalises


def channel_stats(images: torch.Tensor, source: str = "computed") -> Stats:
    """Mean and std of each channel of uint8 images [N, C, H, W] on the [0, 1] scale, accumulated
    in float64 and rounded to 4 decimals like the published values."""
    if images.dtype != torch.uint8 or images.dim() != 4 or len(images) == 0:
        raise ValueError(f"expected uint8 images [N, C, H, W] with N > 0, got {images.dtype} {tuple(images.shape)}")
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for chunk in images.split(_CHUNK):
        x = chunk.to(torch.float64).div_(255).transpose(0, 1).flatten(1)
        total += x.sum(1).cpu()
        squares += x.square().sum(1).cpu()
    count = images.numel() // images.shape[1]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt().clamp_min(_MIN_STD)
    return Stats(tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist()), source)


def dataset_stats(data: str, train_set: ImageSet) -> Stats:
    """The statistics of data set `data` (a kpfast.data name or a path): the published ones for
    the named sets, else those of its training images `train_set`."""
    known = KNOWN.get(data)
    if known is not None and len(known.mean) == train_set.images.shape[1]:
        return known
    return channel_stats(train_set.images, f"computed from the {len(train_set)} training images")
