"""kpfast reproduce: the published accuracy table, re-measured, with wrong keys and timings.

Trains the grid plain + {shuffle, negpos, ffx} x M in {2, 4, 8, 16} (13 models, each with its own
fresh key), evaluates each with the correct key, --wrong-keys random wrong keys and plain images,
times each against the plain model, and writes results.md (ours beside the published numbers),
results.json and accuracy_vs_block_size.png to --out after every model.

--data is the data set (default cifar10, downloaded once); the paper's numbers are on CIFAR-10,
so an image folder or zip of CIFAR-10 (train/<class>/, test/<class>/) works as well.

--cells picks a subset: a comma list of 'plain' and <transform>-<M> (transform: shuffle, negpos
or ffx; M: a block size dividing the image size), e.g. --cells plain,ffx-4,shuffle-4,negpos-4.
Default 'all': plain and M=4 first, then M=2, 8, 16.

The defaults (ResNet-18, 30 epochs, 13 models) are sized for a GPU (--device auto picks CUDA when
there is one). On a CPU the run first times a few training steps and prints how long the grid
will take; beyond an hour it also prints the flags of a run that fits a CPU, with its time.

Re-running the same command resumes: finished models are skipped, an interrupted one continues
from its last epoch. Keys are kept in <out>/keys (mode 0600), never in the results.

On several GPUs: torchrun --nproc-per-node 8 -m kpfast reproduce ... (--batch-size is the global
batch; rank 0 evaluates and writes; on several machines --out must be on a shared file system,
as every rank reads each cell's key from <out>/keys).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..engine.distributed import process_group
from ..errors import Interrupted
from ..protection.grid import parse_cells, run_grid
from .options import positive_int
from .train import add_run_arguments, run_config


def add_arguments(p: argparse.ArgumentParser, name: str) -> None:
    p.add_argument("--data", default="cifar10",
                   help="data set: cifar10 (default), or an image folder or zip of CIFAR-10")
    p.add_argument("--cells", default="all", help="models to train, e.g. plain,ffx-4,shuffle-4 (default: all)")
    p.add_argument("--out", default="kpfast-reproduce", help="results folder (default: kpfast-reproduce)")
    p.add_argument("--wrong-keys", type=positive_int, default=10, help="random wrong keys per model (default: 10)")
    p.add_argument("--save-models", action="store_true", help="also write each model to <out>/models/")
    add_run_arguments(p, epochs=30, model="resnet18")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    cells = parse_cells(args.cells)
    with process_group(args.device) as ranks:  # a single process outside torchrun
        config = run_config(args, data=args.data)
        try:
            run_grid(config, cells, args.out, wrong_keys=args.wrong_keys, save_models=args.save_models,
                     sync_batchnorm=args.sync_bn)
        except KeyboardInterrupt as e:  # Ctrl-C: finished models and the last epoch are kept
            raise Interrupted(f"{e or 'interrupted'}; to continue, run the same command again") from None
    if ranks.is_main:
        print(f"wrote {Path(args.out) / 'results.md'} and {Path(args.out) / 'accuracy_vs_block_size.png'}")
    return 0
