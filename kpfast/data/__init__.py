"""Data sets as uint8 `ImageSet`s, a loader that keeps them on the training device, and one that
streams data kept on the CPU through DataLoader workers (`StreamLoader`, `TransformCollate`,
`ImageFolderStream`: kpfast.data.pipeline and kpfast.data.image_stream).

Every loader returns `(train, test)`. Only image folders need Pillow (``kpfast[cli]``): their
loaders are imported when first used, so the rest of this package needs torch and numpy alone.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataNotFoundError
from .augment import crop_u8, random_crop_u8, random_flip_u8
from .cache import cache_dir
from .cifar10 import load_cifar10
from .download import ChecksumError, DownloadError, download_file, verify_file
from .fashion_mnist import load_fashion_mnist, read_idx
from .imageset import ImageSet
from .loader import DeviceLoader
from .stats import Stats, channel_stats, dataset_stats
from .synthetic import make_synthetic

__all__ = [
    "ChecksumError", "DeviceLoader", "DownloadError", "ImageFolderStream", "ImageSet", "Stats", "StreamLoader",
    "TransformCollate", "cache_dir", "channel_stats", "crop_u8", "dataset_stats", "download_file", "load_cifar10",
    "load_dataset", "load_fashion_mnist", "load_image_folder", "make_synthetic", "random_crop_u8", "random_flip_u8",
    "read_idx", "verify_file",
]

DATASETS = ("cifar10", "cifar10-folder", "fashion-mnist", "synthetic")


def __getattr__(name: str) -> Any:
    if name == "load_image_folder":  # lazy: Pillow is imported only when a folder is read
        from .folders import load_image_folder
        return load_image_folder
    if name == "ImageFolderStream":
        from .image_stream import ImageFolderStream
        return ImageFolderStream
    if name in ("StreamLoader", "TransformCollate"):  # lazy: they import the engine, which imports this package
        from . import pipeline
        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_dataset(name: str, root: str | os.PathLike[str] | None = None, *, progress: bool = True,
                 **kwargs: Any) -> tuple[ImageSet, ImageSet]:
    """(train, test) of a data set by name; `kwargs` go to its loader.

    - "cifar10": the original python archive (`load_cifar10`; root: its folder or path),
    - "cifar10-folder": an image folder or zip (`load_image_folder`; root required),
    - "fashion-mnist": idx files (`load_fashion_mnist`; root: their folder),
    - "synthetic": generated in code (`make_synthetic`; no root),
    - or the path of an image folder or zip, as a shorthand for "cifar10-folder".

    A folder or zip written by ``kpfast encrypt`` loads as the protected values it holds
    (`kpfast.data.protected_folder`).

    `progress` shows the download and decoding bars of the loaders that have them.
    """
    if name == "cifar10":
        return load_cifar10(root, progress=progress, **kwargs)
    if name == "fashion-mnist":
        return load_fashion_mnist(root, **kwargs)
    if name == "synthetic":
        if root is not None:
            raise ConfigError("the synthetic data set is generated, it takes no root")
        return make_synthetic(**kwargs)
    if name == "cifar10-folder":
        if root is None:
            raise ConfigError("cifar10-folder needs root=<folder or .zip with train/ and test/>")
        from .folders import load_image_folder
        return load_image_folder(root, progress=progress, **kwargs)
    if root is None and Path(name).expanduser().exists():
        from .folders import load_image_folder
        return load_image_folder(name, progress=progress, **kwargs)
    raise DataNotFoundError(f"unknown data set {name!r}: expected one of {', '.join(DATASETS)} "
                            "or the path of an image folder or zip")
