"""Protected data sets as 8-bit PNG files: what clients send and what an attacker collects.

Layout: `<root>/<split>/<class>/<index>.png`, index = the image's position in its split, so a
reload restores the original order (pairs with the plain set stay aligned). The export is
atomic as a whole: files are written into a hidden sibling folder, flushed, and the folder is
renamed into place, so `<root>/<split>` is complete or absent, never half written.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from ..atomic import write_json
from ..data import ImageSet
from ..errors import DataError, DataNotFoundError, OutputExistsError
from ..report.imageio import Image
from ..report.progress import bar

MANIFEST = "manifest.json"


def export_png(images: ImageSet, root: str | os.PathLike[str], split: str, *, progress: bool = True) -> Path:
    """Write uint8 RGB `images` as PNGs under `root/split/<class>/<index>.png`; returns that folder."""
    if images.images.shape[1] != 3:
        raise DataError(f"expected RGB images [N, 3, H, W], got {tuple(images.images.shape)}")
    dest = Path(root) / split
    if dest.exists():
        raise OutputExistsError(f"{dest} exists: remove it to export again")
    tmp = dest.with_name(f".{split}.partial")
    shutil.rmtree(tmp, ignore_errors=True)  # left over from an interrupted export
    for name in images.classes:
        (tmp / name).mkdir(parents=True)
    pixels = images.images.cpu().permute(0, 2, 3, 1).numpy()
    labels = images.labels.tolist()
    digits = max(5, len(str(len(labels))))
    for i in bar(range(len(labels)), desc=f"export {split}", enabled=progress, leave=False):
        Image.fromarray(pixels[i]).save(tmp / images.classes[labels[i]] / f"{i:0{digits}d}.png")
    manifest = {"count": len(labels), "classes": list(images.classes), "shape": list(images.images.shape[1:])}
    write_json(tmp / MANIFEST, manifest)
    os.sync()  # one flush for all files, instead of one fsync per small file
    os.replace(tmp, dest)
    return dest


def load_png(root: str | os.PathLike[str], split: str) -> ImageSet:
    """Reload an `export_png` folder, images in their original order."""
    folder = Path(root) / split
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        raise DataNotFoundError(f"{folder} is not a complete kpfast export (no {MANIFEST})") from None
    classes = tuple(manifest["classes"])
    n = manifest["count"]
    images = np.zeros((n, *manifest["shape"][1:], manifest["shape"][0]), dtype=np.uint8)
    labels = np.full(n, -1, dtype=np.int64)
    for label, name in enumerate(classes):
        for file in (folder / name).glob("*.png"):
            i = int(file.stem)
            with Image.open(file) as im:
                images[i] = np.asarray(im.convert("RGB"))
            labels[i] = label
    if (labels < 0).any():
        raise DataError(f"{folder}: {int((labels < 0).sum())} of {n} images are missing")
    return ImageSet(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels), classes)
