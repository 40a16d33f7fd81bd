"""kpfast bench: the fused transform against a plain uint8 -> float copy of the same images (the
memory-traffic floor), interleaved in one run. The comparison with the reference-style torch peer
is in the repository's benchmarks/ (python benchmarks/peer_table.py)."""
from __future__ import annotations

import argparse

import torch

from ..engine.device import default_device, device_name, resolve_device
from ..report import bench
from .options import positive_int


def add_arguments(p: argparse.ArgumentParser, name: str) -> None:
    p.add_argument("--device", default=default_device())
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--repeats", type=positive_int, default=7)
    p.add_argument("--quick", action="store_true", help="only the CIFAR-10 batch")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    cases = bench.CASES[:1] if args.quick else bench.CASES
    rows = bench.run(cases, device=device, dtype=getattr(torch, args.dtype), repeats=args.repeats)
    print(f"Shuffle+NP+FFX + Normalize, uint8 -> {args.dtype}, {device_name(device)}, median of {args.repeats}:\n")
    print(bench.format_table(rows))
    return 0
