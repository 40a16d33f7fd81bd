"""Image files of protected images: 8-bit PNG for byte-valued chains, 16-bit PNG (pypng: Pillow
cannot write 16-bit RGB) for the integer codes of FFX chains. Writes are atomic."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .atomic import atomic_write

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def read_image(path: str | Path, channels: int) -> np.ndarray:
    """An image as uint8 [C, H, W] (RGB for 3 channels, grey for 1)."""
    mode = {1: "L", 3: "RGB", 4: "RGBA"}.get(channels)
    if mode is None:
        raise ValueError(f"images with {channels} channels are not supported for files")
    try:
        with Image.open(path) as im:
            a = np.asarray(im.convert(mode))
    except OSError as e:
        raise ValueError(f"cannot read image {path}: {e}") from None
    return a.reshape(a.shape[0], a.shape[1], channels).transpose(2, 0, 1)


def write_png(path: str | Path, codes: np.ndarray, bitdepth: int) -> None:
    """Write [C, H, W] integer codes as an 8- or 16-bit PNG, atomically."""
    import png  # pypng: only the protected-image files need it

    C, H, W = codes.shape
    rows = codes.transpose(1, 2, 0).reshape(H, W * C)
    writer = png.Writer(W, H, greyscale=C == 1, alpha=C == 4, bitdepth=bitdepth)
    data = rows.astype(np.uint16 if bitdepth == 16 else np.uint8)
    atomic_write(path, lambda f: writer.write(f, data))


def read_png_codes(path: str | Path) -> np.ndarray:
    """The integer codes of an 8- or 16-bit PNG as int64 [C, H, W]."""
    import png

    try:
        width, height, rows, info = png.Reader(filename=str(path)).asDirect()
        a = np.vstack([np.asarray(r, dtype=np.int64) for r in rows])
    except (png.Error, OSError) as e:
        raise ValueError(f"cannot read PNG {path}: {e}") from None
    C = info["planes"]
    return a.reshape(height, width, C).transpose(2, 0, 1)


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files
