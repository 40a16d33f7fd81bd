"""Image files of protected images: 8-bit PNG for byte-valued chains, 16-bit PNG (pypng: Pillow
cannot write 16-bit RGB) for the integer codes of FFX chains. Writes are atomic.

Needs the ``kpfast[cli]`` extra (Pillow; pypng for the PNG codes).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..errors import DataError, DataNotFoundError
from ..extras import require

Image = require("PIL.Image")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# What Pillow raises for a file it cannot decode (DecompressionBombError: more pixels than it
# allows, a denial-of-service guard; SyntaxError: some broken headers).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def read_image(path: str | Path, channels: int) -> np.ndarray:
    """An image as uint8 [C, H, W] (RGB for 3 channels, grey for 1)."""
    mode = {1: "L", 3: "RGB", 4: "RGBA"}.get(channels)
    if mode is None:
        raise DataError(f"images with {channels} channels are not supported for files")
    try:
        with Image.open(path) as im:
            a = np.asarray(im.convert(mode))
    except DECODE_ERRORS as e:
        raise DataError(f"cannot read image {path}: {e}") from None
    return a.reshape(a.shape[0], a.shape[1], channels).transpose(2, 0, 1)


def write_png(path: str | Path, codes: np.ndarray, bitdepth: int) -> None:
    """Write [C, H, W] integer codes as an 8- or 16-bit PNG, atomically."""
    png = require("png")
    C, H, W = codes.shape
    rows = codes.transpose(1, 2, 0).reshape(H, W * C)
    writer = png.Writer(W, H, greyscale=C == 1, alpha=C == 4, bitdepth=bitdepth)
    data = rows.astype(np.uint16 if bitdepth == 16 else np.uint8)
    atomic_write(path, lambda f: writer.write(f, data))


def read_png_codes(path: str | Path) -> np.ndarray:
    """The integer codes of an 8- or 16-bit PNG as int64 [C, H, W]."""
    png = require("png")
    try:
        width, height, rows, info = png.Reader(filename=str(path)).asDirect()
        a = np.vstack([np.asarray(r, dtype=np.int64) for r in rows])
    except (png.Error, OSError) as e:
        raise DataError(f"cannot read PNG {path}: {e}") from None
    C = info["planes"]
    return a.reshape(height, width, C).transpose(2, 0, 1)


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataNotFoundError(f"{folder} is not a folder")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files
