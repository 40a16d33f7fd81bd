"""Fashion-MNIST from its idx files (gzipped or not)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError, DataNotFoundError
from .imageset import ImageSet

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

# idx type byte -> numpy dtype; multi-byte values are big-endian.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """The array in an idx file (`.gz` is decompressed), after checking its header and size.

    Layout: two zero bytes, a type byte, a dimension count, one big-endian uint32 per
    dimension, then the values.
    """
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (EOFError, gzip.BadGzipFile) as e:  # EOFError: a truncated .gz
        raise DataError(f"{path}: damaged gzip stream: {e}") from e
    if len(raw) < 4 or raw[0] or raw[1] or raw[2] not in _IDX_TYPES:
        raise DataError(f"{path}: not an idx file (magic bytes {raw[:4].hex() or 'missing'})")
    dtype, ndim = np.dtype(_IDX_TYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated idx header ({len(raw)} of {header} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, offset=4))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "too long"
        raise DataError(f"{path}: {what}: {len(raw)} bytes, expected {expected} "
                         f"for shape {shape} of {dtype}")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def load_fashion_mnist(root: str | os.PathLike[str] | None = None) -> tuple[ImageSet, ImageSet]:
    """(train, test): 60,000 + 10,000 uint8 images [N, 1, 28, 28], 10 classes.

    `root` holds `{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`; default: where
    Debian's `dataset-fashion-mnist` package puts them.
    """
    folder = Path(root).expanduser() if root is not None else DEFAULT_ROOT
    return _load_split(folder, "train"), _load_split(folder, "t10k")


def _load_split(folder: Path, prefix: str) -> ImageSet:
    images = read_idx(_find(folder, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(folder, f"{prefix}-labels-idx1-ubyte"))
    if images.dtype != np.uint8 or images.ndim != 3:
        raise DataError(f"{folder}: {prefix} images are {images.dtype} {images.shape}, "
                         "expected uint8 [N, H, W]")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{folder}: {len(images)} {prefix} images but labels of shape {labels.shape}")
    return ImageSet(torch.from_numpy(images[:, None]),
                    torch.from_numpy(labels.astype(np.int64)), CLASSES)


def _find(folder: Path, stem: str) -> Path:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.exists():
            return candidate
    raise DataNotFoundError(f"{folder}: neither {stem} nor {stem}.gz exists")
