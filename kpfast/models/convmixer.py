"""ConvMixer (Trockman & Kolter, "Patches Are All You Need?", 2022) for small images.

A non-overlapping patch embedding (kernel = stride = patch size, then GELU and BatchNorm), then
``depth`` blocks of a depthwise convolution with a residual connection (it mixes neighbouring
patches) and a pointwise convolution, global average pooling and a linear head. The defaults
(ConvMixer-128/6, kernel 5, patch 4: 0.1 M params, small enough to train on a CPU) suit 32x32 and
28x28 images; any size divisible by the patch size works.
"""

from __future__ import annotations

import torch
from torch import nn


class Residual(nn.Module):
    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x) + x


def _mixer_block(dim: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(
        Residual(nn.Sequential(nn.Conv2d(dim, dim, kernel_size, groups=dim, padding="same"), nn.GELU(),
                               nn.BatchNorm2d(dim))),
        nn.Conv2d(dim, dim, 1), nn.GELU(), nn.BatchNorm2d(dim))


class ConvMixer(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, dim: int = 128, depth: int = 6,
                 kernel_size: int = 5, patch_size: int = 4) -> None:
        super().__init__()
        self.num_classes, self.in_channels, self.patch_size = num_classes, in_channels, patch_size
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.stem = nn.Sequential(nn.GELU(), nn.BatchNorm2d(dim))
        self.blocks = nn.Sequential(*[_mixer_block(dim, kernel_size) for _ in range(depth)])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(self.patch_embed(x)))
        return self.fc(torch.flatten(self.pool(x), 1))
