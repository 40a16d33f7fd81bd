"""CIFAR ResNets: kuangliu-style ResNet-18 and He et al.'s ResNet-20.

Both use a 3x3 stem without max-pool (32x32 inputs are small) and end in adaptive average
pooling, so any input of at least 16x16 pixels and any channel count works.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut.

    shortcut="conv": 1x1 conv + BN when the shape changes (option B, ResNet-18).
    shortcut="pad": strided identity with zero-padded channels (option A, ResNet-20: no weights).
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, shortcut: str = "conv") -> None:
        super().__init__()
        self.conv1 = _conv3x3(c_in, c_out, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = _conv3x3(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            if shortcut == "conv":
                self.shortcut = nn.Sequential(
                    nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
                )
            elif shortcut == "pad":
                self.shortcut = _PadShortcut(c_out - c_in, stride)
            else:
                raise ValueError(f"unknown shortcut {shortcut!r}; expected 'conv' or 'pad'")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class _PadShortcut(nn.Module):
    """Option-A shortcut: subsample spatially, zero-pad the new channels evenly on both sides."""

    def __init__(self, extra_channels: int, stride: int) -> None:
        super().__init__()
        self.before = extra_channels // 2
        self.after = extra_channels - self.before
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.before, self.after))


class _CifarResNet(nn.Module):
    """Stem conv -> stages of BasicBlocks (the first block of each later stage has stride 2)."""

    def __init__(
        self,
        widths: list[int],
        depths: list[int],
        shortcut: str,
        num_classes: int,
        in_channels: int,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.stem = nn.Sequential(_conv3x3(in_channels, widths[0]), nn.BatchNorm2d(widths[0]), nn.ReLU())
        blocks: list[nn.Module] = []
        c_in = widths[0]
        for i, (width, depth) in enumerate(zip(widths, depths)):
            for j in range(depth):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(BasicBlock(c_in, width, stride, shortcut))
                c_in = width
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


class ResNet18(_CifarResNet):
    """kuangliu/pytorch-cifar ResNet-18: 64-512 channels, blocks [2,2,2,2]; 11.17 M params (10 classes)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__([64, 128, 256, 512], [2, 2, 2, 2], "conv", num_classes, in_channels)


class ResNet20(_CifarResNet):
    """He et al. (2016) CIFAR ResNet-20: 16/32/64 channels, 3 blocks per stage, option-A shortcuts;
    0.27 M params."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__([16, 32, 64], [3, 3, 3], "pad", num_classes, in_channels)
        # Kaiming init as in the usual CIFAR ResNet-20 code (akamaster/pytorch_resnet_cifar10).
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)
