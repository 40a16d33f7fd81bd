"""A picture grid of image batches side by side (one column per batch), with a title above
each column: what a reader wants to see of a transform. Needs Pillow (``kpfast[cli]``)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..atomic import atomic_write
from ..errors import ConfigError
from ..extras import require

Image = require("PIL.Image")
ImageDraw = require("PIL.ImageDraw")


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """uint8 images, or float images in [0, 1], as uint8 [N, H, W, C] (RGB or grey)."""
    if images.dtype != torch.uint8:
        images = torch.round(images.detach().float().clamp(0, 1) * 255).to(torch.uint8)
    return images.cpu().permute(0, 2, 3, 1).numpy()


def image_grid(columns: Sequence[torch.Tensor], titles: Sequence[str], *, scale: int = 4,
               gap: int = 4, title_height: int = 16) -> Image.Image:
    """Images of every column stacked vertically, columns left to right, titles on top."""
    if len(columns) != len(titles):
        raise ConfigError("one title per column")
    cols = [to_uint8(c) for c in columns]
    n, h, w, channels = cols[0].shape
    if any(c.shape != cols[0].shape for c in cols):
        raise ConfigError("all columns must hold images of one shape")
    cell_w, cell_h = w * scale, h * scale
    width = len(cols) * (cell_w + gap) + gap
    height = title_height + n * (cell_h + gap) + gap
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for j, (col, title) in enumerate(zip(cols, titles)):
        x0 = gap + j * (cell_w + gap)
        draw.text((x0, 2), title, fill="black")
        for i in range(n):
            tile = Image.fromarray(col[i].squeeze(-1) if channels == 1 else col[i])
            tile = tile.convert("RGB").resize((cell_w, cell_h), Image.NEAREST)
            canvas.paste(tile, (x0, title_height + gap + i * (cell_h + gap)))
    return canvas


def save_grid(path: str | Path, columns: Sequence[torch.Tensor], titles: Sequence[str], **kwargs) -> Path:
    """`image_grid` written as a PNG, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = image_grid(columns, titles, **kwargs)
    atomic_write(path, lambda f: grid.save(f, format="PNG"))
    return path
