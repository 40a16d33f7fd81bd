"""A small synthetic 10-class image set, generated in code, that stays learnable when scrambled.

Block-wise encryption (e.g. a secret pixel shuffle inside every 4x4 block) destroys
detail inside a block but keeps colours, the layout of blocks on the 8x8 block grid and
the statistics inside each block. So each class is a combination of exactly those:
a colour, a coarse shape (disc, ring, horizontal or vertical bar), and a texture (smooth,
or 2-pixel stripes, which give a block a high internal variance). Every colour, shape
and texture is shared by several classes, and each image gets random position, size,
colours, background, stripe direction and pixel noise, so no single pixel or feature
decides the class.

Measured on 2 CPU cores (~2.5 s per epoch): a 3-layer CNN trained on the default 5,000
images passes 99% test accuracy after 11 epochs on plain images, and after 15 when every
4x4 block is scrambled with one secret shuffle of its 48 values.
"""

from __future__ import annotations

import torch

from .imageset import ImageSet

SIZE = 32
_CHUNK = 2048  # images rendered at once
_COLOURS = {
    "red": (0.90, 0.15, 0.10),
    "green": (0.15, 0.80, 0.20),
    "blue": (0.15, 0.30, 0.95),
    "yellow": (0.95, 0.85, 0.10),
    "magenta": (0.85, 0.20, 0.85),
}
_SHAPES = ("disc", "ring", "hbar", "vbar")
# (colour, shape, striped) per class; names read "<colour>-[striped-]<shape>".
_CLASSES = (
    ("red", "disc", False), ("red", "hbar", False),
    ("green", "vbar", False), ("green", "disc", True),
    ("blue", "disc", False), ("blue", "disc", True),
    ("yellow", "ring", False), ("yellow", "hbar", True),
    ("magenta", "vbar", True), ("magenta", "ring", True),
)
CLASSES = tuple(f"{c}-{'striped-' if s else ''}{shape}" for c, shape, s in _CLASSES)


def make_synthetic(n_train: int = 5000, n_test: int = 1000, seed: int = 0
                   ) -> tuple[ImageSet, ImageSet]:
    """(train, test) of uint8 images [N, 3, 32, 32], 10 balanced classes, same for a seed.

    The two sets come from separate streams (seeds 2*seed and 2*seed + 1), so the test
    set does not change with `n_train` and never overlaps another seed's train set.
    """
    return _generate(n_train, 2 * seed), _generate(n_test, 2 * seed + 1)


def _generate(n: int, seed: int) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    # Balanced labels: each class n // 10 or n // 10 + 1 times, in random order.
    labels = (torch.arange(n) % len(CLASSES))[torch.randperm(n, generator=g)]
    # In chunks, so the float temporaries stay small for large n.
    chunks = [_render(labels[i:i + _CHUNK], g) for i in range(0, n, _CHUNK)]
    images = torch.cat(chunks) if chunks else torch.empty(0, 3, SIZE, SIZE, dtype=torch.uint8)
    return ImageSet(images, labels, CLASSES)


def _render(labels: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """uint8 images [n, 3, 32, 32] of the given classes."""
    n = len(labels)

    def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(*shape, n, generator=g).movedim(-1, 0)

    colour = torch.tensor([list(_COLOURS).index(c) for c, _, _ in _CLASSES])[labels]
    shape = torch.tensor([_SHAPES.index(s) for _, s, _ in _CLASSES])[labels]
    striped = torch.tensor([s for _, _, s in _CLASSES])[labels]

    # Pixel-centre coordinates relative to a jittered shape centre, [n, 32, 32].
    axis = torch.arange(SIZE, dtype=torch.float32) + 0.5
    centre = uniform(SIZE / 2 - 5, SIZE / 2 + 5, 2)
    dy = axis[None, :, None] - centre[:, 0, None, None]
    dx = axis[None, None, :] - centre[:, 1, None, None]
    radius, half_width, half_length = (uniform(lo, hi)[:, None, None]
                                       for lo, hi in ((7.5, 11.5), (3.0, 5.0), (9.0, 13.0)))
    r = torch.sqrt(dx**2 + dy**2)
    masks = torch.stack([
        r <= radius,  # disc
        (r <= radius + 1) & (r >= 0.55 * (radius + 1)),  # ring, hollow over ~2 blocks
        (dy.abs() <= half_width) & (dx.abs() <= half_length),  # horizontal bar
        (dx.abs() <= half_width) & (dy.abs() <= half_length),  # vertical bar
    ])
    mask = masks[shape, torch.arange(n)][:, None]  # [n, 1, 32, 32]

    # Stripes of period 2 pixels in a random one of three directions (phase: from the centre).
    direction = torch.randint(0, 3, (n,), generator=g)[:, None, None]
    yy, xx = dy.floor().long(), dx.floor().long()
    along = torch.where(direction == 0, yy, torch.where(direction == 1, xx, yy + xx))
    dark = (along % 2 == 1) & striped[:, None, None]
    shade = torch.where(dark, 0.45, 1.0)[:, None]

    palette = torch.tensor(list(_COLOURS.values()))
    foreground = (palette[colour] * uniform(0.75, 1.05)[:, None]
                  + uniform(-0.08, 0.08, 3))[:, :, None, None]
    # Greyish background with a tint and a linear gradient, so its colour is uninformative.
    grey = uniform(0.05, 0.6)[:, None] + uniform(-0.1, 0.1, 3)
    slope = uniform(-0.2, 0.2, 2) / SIZE
    ramp = axis - SIZE / 2
    gradient = slope[:, 0, None, None] * ramp[:, None] + slope[:, 1, None, None] * ramp
    background = grey[:, :, None, None] + gradient[:, None]

    image = torch.where(mask, foreground * shade, background)
    image += 0.06 * torch.randn(image.shape, generator=g)
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)
