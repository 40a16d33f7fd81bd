"""Image files: reading plain images exactly (or refusing to), and the PNG files of protected
images (8-bit for byte-valued chains, 16-bit through pypng for FFX codes: Pillow cannot write
16-bit RGB). Writes are atomic.

Exact means: the 8-bit pixels Pillow decodes, in the mode that holds them without loss (grey,
grey with alpha, RGB, RGBA; a palette image is its colours, a 1-bit image grey 0/255). An image
that the key's channel count cannot hold as it is (an alpha channel, grey for colour, colour for
grey, 16 bits per channel, CMYK, ...) is refused by name unless the caller asks to convert it.

Needs the ``kpfast[cli]`` extra (Pillow; pypng for the PNG codes).
"""
from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..errors import DataError, DataNotFoundError, KpfastError
from ..extras import require

Image = require("PIL.Image")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# What Pillow raises for a file it cannot decode (DecompressionBombError: more pixels than it
# allows, a denial-of-service guard; SyntaxError: some broken headers).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}  # channels -> the 8-bit Pillow mode


@contextmanager
def open_image(path: str | Path) -> Iterator[Image.Image]:
    """Pillow's lazy `Image.open`, with every decoding problem (a decompression bomb included,
    already at Pillow's warning size) as a DataError that names the file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                yield im
    except KpfastError:
        raise  # a message about this file already
    except (*DECODE_ERRORS, Image.DecompressionBombWarning) as e:
        raise DataError(f"cannot read image {path}: {e}") from None


def exact_mode(im: Image.Image) -> str | None:
    """The 8-bit mode that holds `im`'s pixels without loss, or None (16 bits, CMYK, float, ...)."""
    if _sixteen_bit(im):
        return None
    if im.mode == "P":
        return "RGBA" if "transparency" in im.info else "RGB"
    return {"1": "L", "L": "L", "LA": "LA", "PA": "RGBA", "RGB": "RGB", "RGBA": "RGBA"}.get(im.mode)


def stored_mode(im: Image.Image) -> str:
    """How `im` is stored, for messages: "RGBA", "L", "16-bit RGB", "CMYK", ..."""
    if _sixteen_bit(im):
        return f"16-bit {'L' if im.mode.startswith('I;16') else im.mode}"
    return exact_mode(im) or im.mode


def conversion_problem(im: Image.Image, channels: int) -> str | None:
    """Why reading `im` for a `channels`-channel key would not round-trip, with what to do; None
    when it is exact."""
    target, found, stored = MODES[channels], exact_mode(im), stored_mode(im)
    if found == target:
        return None
    if _sixteen_bit(im):
        return (f"is {stored}, but the transforms act on 8-bit values; pass --convert to keep the high 8 bits "
                f"(decrypt then gives that 8-bit {target} image)")
    if found is None:
        return (f"is {stored}, which has no exact 8-bit {target} form; pass --convert to convert it (decrypt then "
                f"gives the {target} image)")
    n = len(found)
    if found.endswith("A") and not target.endswith("A"):
        return (f"is {found}, but the key is for {channels}-channel ({target}) images, so its alpha channel "
                f"would be lost; use a key for {n} channels (kpfast keygen --channels {n}) to keep it, or pass "
                "--convert to drop it")
    return (f"is {found} ({n} channel{'s' * (n > 1)}), but the key is for {channels}-channel ({target}) images; "
            f"use a key for {n} channel{'s' * (n > 1)} to keep it as it is, or pass --convert to convert it to "
            f"{target} (decrypt then gives the {target} image)")


def _sixteen_bit(im: Image.Image) -> bool:
    # 16-bit grey opens as I;16; 16-bit RGB(A) PNGs open as 8-bit RGB(A), their raw mode tells.
    args = im.tile[0][3] if im.tile else None  # (codec, extents, offset, args); set until the image loads
    rawmode = args if isinstance(args, str) else (args[0] if args else "")
    return im.mode.startswith("I;16") or ";16" in str(rawmode)


def read_image(path: str | Path, channels: int, *, convert: bool = False) -> np.ndarray:
    """An image as uint8 [C, H, W], C = `channels` (grey, grey+alpha, RGB or RGBA).

    An image that `channels` cannot hold exactly raises a DataError saying why (see
    `conversion_problem`), unless `convert`: then Pillow converts it, 16-bit values keep their
    high byte.
    """
    mode = MODES.get(channels)
    if mode is None:
        raise DataError(f"images with {channels} channels are not supported for files (1 to 4 are)")
    with open_image(path) as im:
        problem = conversion_problem(im, channels)
        if problem is not None and not convert:
            raise DataError(f"{path} {problem}")
        if im.mode.startswith("I;16"):  # Pillow's own conversion clips these at 255
            im = Image.fromarray((np.asarray(im).astype(np.uint16) >> 8).astype(np.uint8))
        a = np.asarray(im if im.mode == mode else im.convert(mode))
    return a.reshape(a.shape[0], a.shape[1], channels).transpose(2, 0, 1)


def write_png(path: str | Path, samples: np.ndarray, bitdepth: int) -> None:
    """Write [C, H, W] integer samples (C = 1 to 4: grey, grey+alpha, RGB, RGBA) as an 8- or
    16-bit PNG, atomically."""
    png = require("png")
    C, H, W = samples.shape
    rows = samples.transpose(1, 2, 0).reshape(H, W * C)
    writer = png.Writer(W, H, greyscale=C <= 2, alpha=C in (2, 4), bitdepth=bitdepth)
    data = rows.astype(np.uint16 if bitdepth == 16 else np.uint8)
    atomic_write(path, lambda f: writer.write(f, data))


def read_png(source: str | Path | bytes, name: str | Path | None = None) -> tuple[np.ndarray, int]:
    """The samples of a PNG (a path, or its bytes with `name` for messages) as int64 [C, H, W],
    and its bit depth. More pixels than Pillow's decompression-bomb limit are refused unread."""
    png = require("png")
    name = name if name is not None else source
    try:
        reader = png.Reader(bytes=source) if isinstance(source, bytes) else png.Reader(filename=str(source))
        reader.preamble()
        if reader.width * reader.height > (Image.MAX_IMAGE_PIXELS or float("inf")):
            raise DataError(f"cannot read PNG {name}: {reader.width}x{reader.height} pixels exceed the limit of "
                            f"{Image.MAX_IMAGE_PIXELS} (a decompression bomb?)")
        width, height, rows, info = reader.asDirect()
        a = np.vstack([np.asarray(r, dtype=np.int64) for r in rows])
    except (png.Error, OSError, ValueError) as e:
        raise DataError(f"cannot read PNG {name}: {e}") from None
    return a.reshape(height, width, info["planes"]).transpose(2, 0, 1), info["bitdepth"]


def read_png_codes(path: str | Path) -> np.ndarray:
    """The integer samples of an 8- or 16-bit PNG as int64 [C, H, W]."""
    return read_png(path)[0]


def list_images(folder: str | Path, *, exclude: str | Path | None = None) -> list[Path]:
    """The image files under `folder`, sorted; hidden files and folders (".*", OS litter such as
    "__MACOSX") are skipped, and so is the folder `exclude` (an output inside the input)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataNotFoundError(f"{folder} is not a folder")
    skip = Path(exclude).resolve() if exclude is not None else None
    files = sorted(p for p in folder.rglob("*")
                   if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not is_hidden(p.relative_to(folder))
                   and (skip is None or not p.resolve().is_relative_to(skip)))
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files


def is_hidden(relative: str | Path) -> bool:
    """Whether a relative path lies in a hidden file or folder, or in macOS litter."""
    return any(p.startswith(".") or p == "__MACOSX" for p in Path(relative).parts)

