"""The transformation network h_θ: a plain 5-level U-Net (the authors' layout, ~34.5 M parameters).

Encoder: two 3x3 conv-BN-ReLU per level, 2x2 max-pool between levels, 64 -> 1024 channels.
Decoder: nearest 2x upsample + 3x3 conv-BN-ReLU, concatenation with the skip, two 3x3 conv-BN-ReLU.
Head: 1x1 conv, no activation: callers apply the sigmoid (`kpfast.i2p.loss.protect`), as in
the original, so the same module also serves as the attacks' inverse network and generator.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError, DataError

LEVELS = 5


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class ConvBlock(nn.Sequential):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(*_conv_bn_relu(c_in, c_out), *_conv_bn_relu(c_out, c_out))


class UpConv(nn.Sequential):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(nn.Upsample(scale_factor=2, mode="nearest"), *_conv_bn_relu(c_in, c_out))


def unet_channels(width: float) -> list[int]:
    """Channels per level: 64*width doubling per level (64 ... 1024 at width 1)."""
    if not width > 0:
        raise ConfigError(f"width must be positive, got {width}")
    return [max(1, round(64 * width * 2**i)) for i in range(LEVELS)]


class UNet(nn.Module):
    """U-Net image-to-image network, 3 -> 3 channels by default; input sides must be divisible by 16."""

    def __init__(self, in_channels: int = 3, out_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.width = in_channels, out_channels, width
        ch = unet_channels(width)
        self.pool = nn.MaxPool2d(2)
        self.down = nn.ModuleList([ConvBlock(in_channels, ch[0])] +
                                  [ConvBlock(ch[i - 1], ch[i]) for i in range(1, LEVELS)])
        # up[i] / merge[i] bring level i+1 back to level i (deepest first when used).
        self.up = nn.ModuleList([UpConv(ch[i + 1], ch[i]) for i in range(LEVELS - 1)])
        self.merge = nn.ModuleList([ConvBlock(2 * ch[i], ch[i]) for i in range(LEVELS - 1)])
        self.head = nn.Conv2d(ch[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise DataError(f"expected images [B, {self.in_channels}, H, W], got shape {tuple(x.shape)}")
        step = 2 ** (LEVELS - 1)
        if x.shape[-2] % step or x.shape[-1] % step:
            raise DataError(f"image height and width must be divisible by {step}, got {tuple(x.shape[-2:])}")
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for i in reversed(range(LEVELS - 1)):
            x = self.merge[i](torch.cat([skips[i], self.up[i](x)], dim=1))
        return self.head(x)

    def config(self) -> dict[str, float | int]:
        return {"in_channels": self.in_channels, "out_channels": self.out_channels, "width": self.width}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
