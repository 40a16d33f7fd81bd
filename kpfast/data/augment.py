"""The reference augmentation (random crop with zero padding, random horizontal flip) on uint8.

Whole batches at once on any device, without a per-image loop. Random numbers come from
a CPU `torch.Generator` and are then moved to the batch's device, so a seed gives the
same result on CPU and CUDA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def crop_u8(x: torch.Tensor, padding: int, offsets: torch.Tensor) -> torch.Tensor:
    """Crop each image of `x` [B, C, H, W] from its zero-padded version.

    `offsets` [B, 2] holds (top, left) in the padded image, each in [0, 2 * padding];
    (padding, padding) returns the image unchanged.
    """
    b, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    windows = padded.unfold(2, h, 1).unfold(3, w, 1)  # every crop, [B, C, 2p+1, 2p+1, H, W] (a view)
    offsets = offsets.to(x.device)
    return windows[torch.arange(b, device=x.device), :, offsets[:, 0], offsets[:, 1]]


def random_crop_u8(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Random crop of the input size from each zero-padded image, offsets uniform per image."""
    offsets = torch.randint(0, 2 * padding + 1, (len(x), 2), generator=generator)
    return crop_u8(x, padding, offsets)


def random_flip_u8(x: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Flip each image of `x` [B, C, H, W] left-right with probability `p`."""
    flip = (torch.rand(len(x), generator=generator) < p).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)
