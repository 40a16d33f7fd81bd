"""kpfast bench: the fused transform against a plain uint8 -> float copy of the same images (the
memory-traffic floor), interleaved in one run; --out writes both into warm buffers (out=), and
--threads sets the CPU threads. The comparison with the reference-style torch peer
is in the repository's benchmarks/ (python benchmarks/peer_table.py)."""
from __future__ import annotations

import argparse

import torch

from ..engine.device import device_name, resolve_device
from ..report import bench
from .options import add_device, positive_int


def add_arguments(p: argparse.ArgumentParser, name: str) -> None:
    add_device(p)
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="output dtype of the transform (default: float32)")
    p.add_argument("--repeats", type=positive_int, default=7, help="timed runs per case; the median is shown (default: 7)")
    p.add_argument("--quick", action="store_true", help="only the CIFAR-10 batch")
    p.add_argument("--out", action="store_true",
                   help="write into a warm buffer with out= (the copy too) instead of a fresh output per call")
    p.add_argument("--threads", type=positive_int, help="CPU threads (default: torch's)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = bench.CASES[:1] if args.quick else bench.CASES
    rows = bench.run(cases, device=device, dtype=getattr(torch, args.dtype), repeats=args.repeats, out=args.out)
    into = "into warm buffers (out=)" if args.out else "fresh outputs"
    print(f"Shuffle+NP+FFX + Normalize, uint8 -> {args.dtype}, {into}, {device_name(device)}, "
          f"median of {args.repeats}:\n")
    print(bench.format_table(rows))
    return 0
