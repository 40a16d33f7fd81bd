#!/usr/bin/env python
"""Images/s of whole DataLoader pipelines on ImageNet-sized JPEG files, side by side (pipelines.py):
decode + RandomResizedCrop alone, kpfast's StreamLoader with the keyed chain fused with Normalize,
and a torchvision-style ToTensor+Normalize pipeline in plain torch. The loaders take turns for
--rounds epochs; the table shows the median and each one's ratio to decode-only.

    python benchmarks/pipeline_table.py [--images 256] [--workers 2] [--batch-size 64] [--rounds 5]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

import torch

from kpfast.engine.device import device_name
from kpfast.report.tables import markdown_table
from pipelines import CROP, IMAGE_SIZE, interleaved, make_jpeg_folder, pipelines, worker_seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_jpeg_folder(Path(tmp), args.images)
        rates = interleaved(pipelines(folder, args.batch_size, args.workers), args.rounds,
                            report=lambda line: print(line, flush=True))
        parts = worker_seconds(folder, args.batch_size)
    floor = statistics.median(next(iter(rates.values())))
    rows = [[name, f"{statistics.median(r):.0f}", f"{min(r):.0f}-{max(r):.0f}", f"{statistics.median(r) / floor:.2f}"]
            for name, r in rates.items()]
    w, h = IMAGE_SIZE
    print(f"\n{args.images} JPEGs of {w}x{h} (quality 90) -> RandomResizedCrop {CROP} + flip, batch {args.batch_size}, "
          f"{args.workers} DataLoader workers, {device_name('cpu')} ({os.cpu_count()} cores), "
          f"torch {torch.__version__}, median of {args.rounds} interleaved epochs:\n")
    print("\n".join(markdown_table(["pipeline", "images/s", "range", "vs decode only"], rows)))
    decode = parts["decode + crop"]
    print(f"\nOne worker's CPU time per batch of {args.batch_size} (one thread, process time, best of 3):\n")
    print("\n".join(markdown_table(["part", "ms", "vs decode + crop"],
                                   [[name, f"{1000 * t:.1f}", f"{t / decode:.1%}"] for name, t in parts.items()])))


if __name__ == "__main__":
    main()
