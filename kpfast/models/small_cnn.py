"""A small, fast CNN for CPU runs and tests (about 0.3 M params).

Three conv-BN-ReLU stages of 32/64/128 channels, each ending in a 2x2 max-pool, then global
max-pooling and a linear layer. Global pooling makes it work for any input of at least 8x8.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, widths: tuple[int, ...] = (32, 64, 128)) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_channels = in_channels
        layers: list[nn.Module] = []
        c_in = in_channels
        for i, width in enumerate(widths):
            # One conv at full resolution (the expensive one), two in the cheaper later stages.
            layers += _conv_bn(c_in, width) + ([] if i == 0 else _conv_bn(width, width))
            layers.append(nn.MaxPool2d(2))
            c_in = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))
