"""kpfast bench: fused transform vs the reference-style torch peer vs a uint8 -> float copy."""
from __future__ import annotations

import argparse

import torch

from .. import bench


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="benchmark the fused transform", description=__doc__)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--quick", action="store_true", help="only the CIFAR-10 batch")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    cases = bench.CASES[:1] if args.quick else bench.CASES
    rows = bench.run(cases, device=args.device, dtype=getattr(torch, args.dtype), repeats=args.repeats)
    where = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else \
        f"CPU, {torch.get_num_threads()} threads"
    print(f"Shuffle+NP+FFX + Normalize, uint8 -> {args.dtype}, {where}, median of {args.repeats}:\n")
    print(bench.format_table(rows))
    return 0
