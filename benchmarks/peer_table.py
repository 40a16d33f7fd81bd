#!/usr/bin/env python
"""The README's throughput table: the fused transform beside the reference-style torch peer
(peer.py) and a plain uint8 -> float copy, interleaved in one run.

    python benchmarks/peer_table.py [--device cuda] [--dtype bfloat16] [--repeats 7] [--quick]
"""
from __future__ import annotations

import argparse

import torch

from kpfast.engine.device import default_device, device_name, resolve_device
from kpfast.report import bench
from peer import reference_transform


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=default_device())
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--quick", action="store_true", help="only the CIFAR-10 batch")
    args = p.parse_args()
    device = resolve_device(args.device)
    rows = bench.run(bench.CASES[:1] if args.quick else bench.CASES, device=device, dtype=getattr(torch, args.dtype),
                     repeats=args.repeats, peers={"peer": reference_transform})
    print(f"Shuffle+NP+FFX + Normalize, uint8 -> {args.dtype}, {device_name(device)}, median of {args.repeats}:\n")
    print(bench.format_table(rows))


if __name__ == "__main__":
    main()
