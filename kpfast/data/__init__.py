"""Data sets as uint8 `ImageSet`s, and a loader that keeps them on the training device.

Every loader returns `(train, test)`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .augment import crop_u8, random_crop_u8, random_flip_u8
from .cache import cache_dir
from .cifar10 import load_cifar10
from .download import ChecksumError, download_file, verify_file
from .fashion_mnist import load_fashion_mnist, read_idx
from .folders import load_image_folder
from .imageset import ImageSet
from .loader import DeviceLoader
from .synthetic import make_synthetic

__all__ = [
    "ChecksumError", "DeviceLoader", "ImageSet", "cache_dir", "crop_u8", "download_file",
    "load_cifar10", "load_dataset", "load_fashion_mnist", "load_image_folder",
    "make_synthetic", "random_crop_u8", "random_flip_u8", "read_idx", "verify_file",
]

DATASETS = ("cifar10", "cifar10-folder", "fashion-mnist", "synthetic")


def load_dataset(name: str, root: str | os.PathLike[str] | None = None,
                 **kwargs: Any) -> tuple[ImageSet, ImageSet]:
    """(train, test) of a data set by name; `kwargs` go to its loader.

    - "cifar10": the original python archive (`load_cifar10`; root: its folder or path),
    - "cifar10-folder": an image folder or zip (`load_image_folder`; root required),
    - "fashion-mnist": idx files (`load_fashion_mnist`; root: their folder),
    - "synthetic": generated in code (`make_synthetic`; no root),
    - or the path of an image folder or zip, as a shorthand for "cifar10-folder".
    """
    if name == "cifar10":
        return load_cifar10(root, **kwargs)
    if name == "fashion-mnist":
        return load_fashion_mnist(root, **kwargs)
    if name == "synthetic":
        if root is not None:
            raise ValueError("the synthetic data set is generated, it takes no root")
        return make_synthetic(**kwargs)
    if name == "cifar10-folder":
        if root is None:
            raise ValueError("cifar10-folder needs root=<folder or .zip with train/ and test/>")
        return load_image_folder(root, **kwargs)
    if root is None and Path(name).expanduser().exists():
        return load_image_folder(name, **kwargs)
    raise ValueError(f"unknown data set {name!r}: expected one of {', '.join(DATASETS)} "
                     "or the path of an image folder or zip")
