"""A small Vision Transformer for 32x32 and 28x28 images (0.3 M params: it trains on a CPU).

The stem is a non-overlapping patch embedding (a convolution with kernel = stride = patch size),
so a block-wise key with block size = patch size can be folded into its weights
(:mod:`kpfast.protection.model_transform`). Pre-norm transformer blocks, a class token without a
position embedding of its own (it is one learned vector), and a linear head on the class token.

The patch tokens' position embeddings are a learned grid for the largest image (32x32: 8x8
patches of 4x4); a smaller image uses its top-left part (28x28: 7x7), so one architecture serves
both sizes and rebuilds by name from a checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DataError


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, T, D = x.shape
        q, k, v = self.qkv(x).view(N, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(N, T, D))


class Block(nn.Module):
    """Pre-norm transformer block: every token is treated alike, in any order."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Vision Transformer: patch embedding, position embedding, class token, ``depth`` blocks.

    Args:
        num_classes, in_channels: as every kpfast model.
        patch_size: the patch (and key block) size; images need H and W divisible by it.
        dim, depth, heads, mlp_ratio: width, number of blocks, attention heads, MLP expansion.
        max_image_size: the largest image side the position embeddings cover.

    Shape:
        ``[N, in_channels, H, W]`` -> ``[N, num_classes]``, H and W at most ``max_image_size``.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, patch_size: int = 4, dim: int = 96,
                 depth: int = 4, heads: int = 4, mlp_ratio: float = 2.0, max_image_size: int = 32) -> None:
        super().__init__()
        self.num_classes, self.in_channels, self.patch_size = num_classes, in_channels, patch_size
        grid = max_image_size // patch_size
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, dim, grid, grid))  # [1, D, rows, columns]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        # torch's default init of the layers: with kpfast's SGD recipe it learns faster than the
        # usual trunc-normal(0.02) of AdamW recipes (Fashion-MNIST, 3,000 images, 3 epochs: test
        # accuracy 49% against 33%)
        for p in (self.pos_embed, self.cls_token):
            nn.init.trunc_normal_(p, std=0.02)

    def positions(self, rows: int, columns: int) -> torch.Tensor:
        """The position embeddings of a ``rows x columns`` grid of patches: a view [D, rows, columns]."""
        grid = self.pos_embed.shape[2:]
        if rows > grid[0] or columns > grid[1]:
            raise DataError(f"images of {rows}x{columns} patches are larger than this ViT's position "
                            f"embeddings ({grid[0]}x{grid[1]} patches of {self.patch_size}x{self.patch_size})")
        return self.pos_embed[0, :, :rows, :columns]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)                                   # [N, D, rows, columns]
        x = (x + self.positions(*x.shape[2:])).flatten(2).transpose(1, 2)  # row-major patch tokens
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1)
        return self.head(self.norm(self.blocks(x))[:, 0])
