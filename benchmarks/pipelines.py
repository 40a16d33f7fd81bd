"""Whole DataLoader pipelines on JPEG files, for test_bench_pipeline.py and pipeline_table.py.

Every pipeline reads the same folder of ImageNet-sized JPEGs through the same decode and
RandomResizedCrop + flip (kpfast.data.image_stream.ImageFolderStream, Pillow), with the same
workers, and differs only in what happens to the decoded uint8 crops:

* ``decode only``: collated as uint8 (the floor: decoding, cropping, resizing);
* ``kpfast``: kpfast.data.pipeline.StreamLoader with the keyed Shuffle+NP+FFX chain and Normalize
  fused into one op, written into the shared batch ring in the workers;
* ``ToTensor+Normalize``: what a torchvision pipeline does, in plain torch (torchvision is not a
  kpfast dependency): per image ``ToTensor`` (contiguous CHW, float / 255) and ``Normalize``
  (``(x - mean) / std``), then the DataLoader's default collate. No key transform at all.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from kpfast import BlockTransform, KeySet
from kpfast.data.image_stream import ImageFolderStream
from kpfast.data.pipeline import StreamLoader, TransformCollate
from kpfast.data.stats import IMAGENET

CHAIN = ("shuffle", "negpos", "ffx")
IMAGE_SIZE = (500, 375)  # the typical ImageNet photo
CROP = 224


def make_jpeg_folder(root: Path, images: int = 256, classes: int = 4, seed: int = 0) -> Path:
    """`root/train/<class>/<i>.jpg`: smooth random pictures (as photos are: mostly low frequencies,
    so the files decode like photos rather than like noise), quality 90."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = IMAGE_SIZE
    for i in range(images):
        folder = root / "train" / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, (h // 25 + 1, w // 25 + 1, 3), dtype=np.uint8)
        picture = Image.fromarray(coarse).resize((w, h), Image.BICUBIC)
        noise = rng.integers(-12, 13, (h, w, 3))
        pixels = np.clip(np.asarray(picture, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)
    return root


class ToTensorNormalize(torch.utils.data.Dataset):
    """torchvision's ``Compose([..., ToTensor(), Normalize(mean, std)])`` per image, in plain torch."""

    def __init__(self, images: ImageFolderStream, mean: Iterable[float], std: Iterable[float]) -> None:
        self.images = images
        self.mean = torch.tensor(list(mean)).view(-1, 1, 1)
        self.std = torch.tensor(list(std)).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.images[index]
        return self.convert(image), label

    def convert(self, image: torch.Tensor) -> torch.Tensor:
        x = image.contiguous().float().div(255)  # ToTensor
        return (x - self.mean) / self.std  # Normalize


def pipelines(root: Path, batch_size: int = 64, workers: int = 2) -> dict[str, Iterable]:
    """Name -> a loader to iterate (persistent workers; each iteration is one epoch)."""
    images = ImageFolderStream(root, "train", size=CROP)
    keyed = BlockTransform(KeySet.generate(4), CHAIN, IMAGENET.mean, IMAGENET.std)
    plain = torch.utils.data.DataLoader(ToTensorNormalize(images, IMAGENET.mean, IMAGENET.std), batch_size,
                                        shuffle=True, num_workers=workers, persistent_workers=True, prefetch_factor=2)
    return {
        "decode only (uint8)": StreamLoader(images, batch_size, num_workers=workers),
        "kpfast Shuffle+NP+FFX+Normalize": StreamLoader(images, batch_size, transform=keyed, num_workers=workers),
        "ToTensor+Normalize (plain torch)": plain,
    }


def epoch_seconds(loader: Iterable) -> tuple[float, int]:
    """Seconds to take every batch of one epoch, and the number of images."""
    start, n = time.perf_counter(), 0
    for x, _ in loader:
        n += len(x)
    return time.perf_counter() - start, n


def interleaved(loaders: dict[str, Iterable], rounds: int, report: Callable[[str], None] = lambda _: None
                ) -> dict[str, list[float]]:
    """Images/s of each loader per round, the loaders taking turns (all see the same machine load);
    one warm-up epoch each first (workers start, programs compile)."""
    for loader in loaders.values():
        epoch_seconds(loader)
    rates: dict[str, list[float]] = {name: [] for name in loaders}
    for r in range(rounds):
        for name, loader in loaders.items():
            seconds, n = epoch_seconds(loader)
            rates[name].append(n / seconds)
        report(f"round {r + 1}/{rounds}")
    return rates


def worker_seconds(root: Path, batch_size: int = 64, repeats: int = 3) -> dict[str, float]:
    """CPU seconds one worker spends on one batch, by part (one thread, as in a DataLoader worker;
    process time, so other jobs on the machine hardly count): decoding and cropping the images,
    then collating them with the keyed transform into a ring slot (TransformCollate, which stacks
    into a buffer it keeps; and, for comparison, stacking into a fresh batch), or as
    ToTensor+Normalize does."""
    images = ImageFolderStream(root, "train", size=CROP)
    keyed = TransformCollate(BlockTransform(KeySet.generate(4), CHAIN, IMAGENET.mean, IMAGENET.std))
    plain = ToTensorNormalize(images, IMAGENET.mean, IMAGENET.std)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        samples = [images[i] for i in range(batch_size)]
        slot = keyed.output_like(samples[0]).new_empty((batch_size, 3, CROP, CROP))
        keyed(samples, out=slot)  # warm: the program compiles, the slot's pages are touched
        parts = {
            "decode + crop": lambda: [images[i] for i in range(batch_size)],
            "kpfast: stack + Shuffle+NP+FFX+Normalize into the ring slot": lambda: keyed(samples, out=slot),
            "the same, stacking into a fresh uint8 batch each time": lambda: keyed.transform(
                torch.stack([x for x, _ in samples]), out=slot),
            "ToTensor+Normalize per image + default collate": lambda: torch.utils.data.default_collate(
                [(plain.convert(x), y) for x, y in samples]),
        }
        best = {}
        for name, part in parts.items():
            times = []
            for _ in range(repeats):
                start = time.process_time()
                part()
                times.append(time.process_time() - start)
            best[name] = min(times)
        return best
    finally:
        torch.set_num_threads(threads)
