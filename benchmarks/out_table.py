#!/usr/bin/env python
"""The CPU path at memory speed, as one table: the fused Shuffle+NP+FFX chain, uint8 -> normalised
float, written with out= into a warm buffer, beside ``buf.copy_(u8)`` into a warm buffer of the
same kind (the memory-traffic floor), on the ImageNet batch (64x3x224x224) and the CIFAR-10 batch
(512x3x32x32), float32 and bfloat16 outputs, 1 and 2 threads; and, for comparison, both writing a
fresh output per call (no out=). Every configuration interleaves kpfast and the copy
(kpfast.report.bench.benchmark_case), so each ratio comes from one run under one machine load.
Goals: kpfast within 1.5x of the copy on the ImageNet batch and within 2x on the CIFAR-10 batch
(not judged where the copy itself got several times slower than with the first thread count: an
oversubscribed machine).

    python benchmarks/out_table.py [--repeats 21] [--threads 1,2] [--dtypes float32,bfloat16]

The pytest-benchmark version of the out= rows: benchmarks/test_bench_out.py.
"""
from __future__ import annotations

import argparse
import os

import torch

from kpfast.engine.device import device_name
from kpfast.report import bench
from kpfast.report.tables import markdown_table

CASES = (bench.Case("ImageNet", 64, 224, 4), bench.Case("CIFAR-10", 512, 32, 4))
GOALS = {"ImageNet": 1.5, "CIFAR-10": 2.0}
# More threads never make a warm copy several times slower, unless the machine runs more threads
# than it has cores: then every parallel region waits for its threads' turns, whatever it computes,
# and such a row says nothing about the kernels.
OVERSUBSCRIBED = 3.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=21)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--no-fresh", action="store_true", help="leave out the rows without out=")
    args = p.parse_args()
    rows, single = [], {}
    first = int(args.threads.split(",")[0])
    for threads in map(int, args.threads.split(",")):
        torch.set_num_threads(threads)
        for case in CASES:
            for dtype in args.dtypes.split(","):
                for out in (True,) if args.no_fresh else (True, False):
                    r = bench.benchmark_case(case, dtype=getattr(torch, dtype), repeats=args.repeats, out=out)
                    goal, key = GOALS[case.name], (case.name, dtype, out)
                    alone = single.setdefault(key, r["ms"]["copy"])  # the copy's time with the first thread count
                    if not out:
                        verdict = ""
                    elif r["ms"]["copy"] > OVERSUBSCRIBED * alone:
                        verdict = f"not judged: the copy took {r['ms']['copy'] / alone:.0f}x its {first} thread time"
                    else:
                        verdict = f"<= {goal:g}x: {'met' if r['time_vs_copy'] <= goal else 'missed'}"
                    rows.append([f"{r['case']} {r['shape']}", r["dtype"], threads, "out= (warm)" if out else "fresh",
                                 f"{r['ms']['kpfast']:.2f}", f"{r['ms']['copy']:.2f}", f"{r['time_vs_copy']:.2f}x",
                                 f"{r['cpu_vs_copy']:.2f}x", f"{r['best_vs_copy']:.2f}x", verdict])
                    print(" | ".join(map(str, rows[-1])), flush=True)
    print(f"\nShuffle+NP+FFX + Normalize (M = 4), uint8 -> float, {device_name('cpu').rsplit(',', 1)[0]}), "
          f"{os.cpu_count()} cores, torch {torch.__version__}; median of {args.repeats} interleaved calls; "
          "ratios of wall-clock medians, of process CPU-time medians and of the fastest calls, from the same run "
          "(the goal is judged on the medians):\n")
    print("\n".join(markdown_table(["batch", "output", "threads", "buffers", "kpfast ms", "copy ms", "kpfast / copy",
                                    "CPU time kpfast / copy", "fastest kpfast / copy", "goal"], rows)))


if __name__ == "__main__":
    main()
