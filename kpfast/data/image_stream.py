"""An image folder read image by image (`root/<split>/<class>/*`, the ImageNet layout), for data
sets too large to hold in memory: images of any size are decoded with Pillow and brought to one
size with the usual torchvision-style geometry, before any key transform.

* training (``train=True``): RandomResizedCrop (a random box of 8-100 % of the area and aspect
  ratio 3/4-4/3, resized to ``size`` x ``size``, bilinear) and a random horizontal flip;
* evaluation: Resize of the shorter side to ``size / 0.875`` (256 for 224), bilinear, and a
  CenterCrop of ``size``.

The geometry follows torchvision's ``RandomResizedCrop``, ``Resize`` and ``CenterCrop`` on PIL
images (the same boxes, rounding and fallback), written here with Pillow alone. Random numbers
come from a generator seeded by (seed, epoch, index): an image's crop depends on nothing else,
so a run is reproducible and resumable whatever the number of DataLoader workers or ranks
(`set_epoch` picks the epoch, as the fit loop does for every loader).

Needs Pillow (``kpfast[cli]``).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataError, DataNotFoundError
from ..report.imageio import Image, list_images, open_image

SCALE = (0.08, 1.0)  # RandomResizedCrop's defaults
RATIO = (3 / 4, 4 / 3)
CROP_FRACTION = 0.875  # evaluation: resize to size / 0.875, then crop size (224 of 256)

Box = tuple[int, int, int, int]  # left, top, width, height


def random_resized_crop_box(width: int, height: int, rng: np.random.Generator,
                            scale: tuple[float, float] = SCALE, ratio: tuple[float, float] = RATIO) -> Box:
    """torchvision's RandomResizedCrop.get_params: up to 10 tries at a box of a random area and
    log-uniform aspect ratio inside the image, else the largest central box within `ratio`."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, w, h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def shorter_side_size(width: int, height: int, size: int) -> tuple[int, int]:
    """torchvision's Resize(size) for an int: the shorter side becomes `size`, the longer one
    keeps the aspect ratio (truncated)."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def center_crop_box(width: int, height: int, size: int) -> Box:
    """torchvision's CenterCrop(size) on an image at least `size` on each side."""
    return int(round((width - size) / 2.0)), int(round((height - size) / 2.0)), size, size


class ImageFolderStream(torch.utils.data.Dataset):
    """`root/<split>/<class>/<image>` as (uint8 [3, size, size], label) samples, decoded on demand.

    Args:
        root: the folder holding the splits (e.g. an ImageNet folder with train/ and val/).
        split: the split's folder name.
        size: the side of the square images this yields.
        train: training geometry (random resized crop + flip) or evaluation geometry (resize +
            center crop); default: ``split == "train"``.
        seed: of the training geometry's random numbers.
        classes: the class folder names, in label order (default: the split's own, sorted); give
            the training split's to an evaluation split, so that labels agree.

    Shape: each sample is ``(x [3, size, size] uint8, label int)``; grey, palette and CMYK images
    are converted to RGB (as torchvision's image folders do).
    """

    def __init__(self, root: str | os.PathLike[str], split: str = "train", *, size: int = 224,
                 train: bool | None = None, seed: int = 0, classes: tuple[str, ...] | None = None) -> None:
        if size < 1:
            raise ConfigError(f"size must be a positive number of pixels, got {size}")
        folder = Path(root).expanduser() / split
        if Path(root).is_file():
            raise DataError(f"{root} is a file: images are streamed from a folder (unpack the archive first)")
        if not folder.is_dir():
            raise DataNotFoundError(f"{folder} does not exist: expected {Path(root) / split}/<class>/<image> files")
        found = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not found:
            raise DataNotFoundError(f"{folder} holds no class folders (expected {folder}/<class>/<image>)")
        self.classes = tuple(found) if classes is None else tuple(classes)
        unknown = sorted(set(found) - set(self.classes))
        if unknown:
            raise DataError(f"{folder} has class folders that the given classes lack: {', '.join(unknown[:5])}")
        self.files: list[str] = []
        labels: list[int] = []
        for label, name in enumerate(self.classes):
            if name in found:
                images = list_images(folder / name)
                self.files += [str(p) for p in images]
                labels += [label] * len(images)
        self.labels = torch.tensor(labels, dtype=torch.int64)
        self.split, self.size = split, size
        self.train = split == "train" if train is None else train
        self.seed, self.epoch = seed, 0

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose random crops and flips the next samples get."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path = self.files[index]
        with open_image(path) as im:
            try:
                rgb = im.convert("RGB")
            except (OSError, ValueError, SyntaxError) as e:  # a file that breaks off while decoding
                raise DataError(f"cannot read image {path}: {e}") from None
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            left, top, w, h = random_resized_crop_box(*rgb.size, rng)
            rgb = rgb.crop((left, top, left + w, top + h)).resize((self.size, self.size), Image.BILINEAR)
            pixels = np.array(rgb)
            if rng.uniform() < 0.5:
                pixels = pixels[:, ::-1]
        else:
            rgb = rgb.resize(shorter_side_size(*rgb.size, round(self.size / CROP_FRACTION)), Image.BILINEAR)
            left, top, w, h = center_crop_box(*rgb.size, self.size)
            pixels = np.array(rgb.crop((left, top, left + w, top + h)))
        return torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1), int(self.labels[index])
