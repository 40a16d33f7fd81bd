#!/usr/bin/env python
"""Data-parallel scaling of `kpfast train`: steps/s and images/s for 1, 2, ... ranks at the same
global batch (the same run), measured from the training's own epoch times (the first epoch, which
compiles and warms up, is left out). The configurations take turns for --rounds rounds.

    python benchmarks/distributed_scaling.py                                  # CPU: 1x1, 1x2, 2x1
    python benchmarks/distributed_scaling.py --device cuda --configs 1,2,4,8 --data cifar10 \\
        --model resnet18 --batch-size 512 --epochs 3                          # a multi-GPU machine

A configuration is RANKSxTHREADS (CPU: ranks times torch threads per rank) or RANKS (CUDA: one GPU
per rank). More than one rank runs under `torchrun --standalone --nproc-per-node RANKS`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from kpfast.engine.device import device_name
from kpfast.report.tables import markdown_table


def run(ranks: int, threads: int, args: argparse.Namespace, folder: Path) -> dict:
    out = folder / f"run-{ranks}x{threads}-{len(list(folder.iterdir()))}"
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)]
                if ranks > 1 else [sys.executable])
    command = [*launcher, "-m", "kpfast", "train", "--data", args.data, "--model", args.model, "--device", args.device,
               "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--ops", "shuffle,negpos,ffx",
               "--key", str(folder / "scaling.key"), "--out", str(out), *(["--train-subset", str(args.train_subset)]
                                                                         if args.train_subset else [])]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    summary = json.loads((out / "train.json").read_text())
    steps = math.ceil(summary["train_images"] / summary["config"]["batch_size"])
    seconds = statistics.median(summary["history"]["seconds"][1:])
    return {"steps_per_s": steps / seconds, "images_per_s": steps * summary["config"]["batch_size"] / seconds}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--configs", default=None, help="comma list of RANKSxTHREADS (CPU) or RANKS (CUDA)")
    p.add_argument("--data", default="synthetic")
    p.add_argument("--train-subset", type=int, default=2048)
    p.add_argument("--model", default="small_cnn")
    p.add_argument("--batch-size", type=int, default=128, help="the global batch (default: 128)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    configs = args.configs or ("1x1,1x2,2x1" if args.device == "cpu" else "1,2")
    parsed = [tuple(int(v) for v in (c.split("x") if "x" in c else (c, 1))) for c in configs.split(",")]
    results: dict[tuple[int, int], list[dict]] = {c: [] for c in parsed}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for ranks, threads in parsed:
                results[(ranks, threads)].append(run(ranks, threads, args, Path(tmp)))
            print(f"round {r + 1}/{args.rounds}", flush=True)
    base = statistics.median(x["steps_per_s"] for x in results[parsed[0]])
    rows = []
    for (ranks, threads), xs in results.items():
        steps = [x["steps_per_s"] for x in xs]
        rows.append([ranks, threads if args.device == "cpu" else "-", f"{statistics.median(steps):.2f}",
                     f"{min(steps):.2f}-{max(steps):.2f}",
                     f"{statistics.median(x['images_per_s'] for x in xs):.0f}", f"{statistics.median(steps) / base:.2f}x"])
    print(f"\nkpfast train --model {args.model} --data {args.data} ({args.train_subset or 'all'} images), global batch "
          f"{args.batch_size}, Shuffle+NP+FFX; {device_name(args.device)}, {os.cpu_count()} cores; median of "
          f"{args.rounds} interleaved rounds, epochs 2-{args.epochs}:\n")
    print("\n".join(markdown_table(["ranks", "threads/rank", "steps/s", "range", "images/s", f"vs {configs.split(',')[0]}"],
                                   rows)))


if __name__ == "__main__":
    main()
