"""kpfast reproduce: the published accuracy table, re-measured, with wrong keys and timings.

Trains the grid plain + {shuffle, negpos, ffx} x M in {2, 4, 8, 16} (13 models, each with its own
fresh key), evaluates each with the correct key, --wrong-keys random wrong keys and plain images,
times each against the plain model, and writes results.md (ours beside the published numbers),
results.json and accuracy_vs_block_size.png to --out after every model.

--cells picks a subset: a comma list of 'plain' and <transform>-<M> (transform: shuffle, negpos
or ffx; M: a block size dividing the image size), e.g. --cells plain,ffx-4,shuffle-4,negpos-4.
Default 'all': plain and M=4 first, then M=2, 8, 16.

Re-running the same command resumes: finished models are skipped, an interrupted one continues
from its last epoch. Keys are kept in <out>/keys (mode 0600), never in the results.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..reproduce import parse_cells, run_grid
from .train import add_run_arguments, run_config

DEFAULT_ZIP = Path("../shared/data/cifar10-jpeg.zip")


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="reproduce the published accuracy table (13 models)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_ZIP) if DEFAULT_ZIP.exists() else "cifar10",
                   help=f"data set (default: {DEFAULT_ZIP} if it exists, else cifar10)")
    p.add_argument("--cells", default="all", help="models to train, e.g. plain,ffx-4,shuffle-4 (default: all)")
    p.add_argument("--out", default="kpfast-reproduce", help="results folder (default: kpfast-reproduce)")
    p.add_argument("--wrong-keys", type=int, default=10, help="random wrong keys per model (default: 10)")
    p.add_argument("--save-models", action="store_true", help="also write each model to <out>/models/")
    add_run_arguments(p, epochs=30, model="resnet18")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    cells = parse_cells(args.cells)
    config = run_config(args, data=args.data)
    run_grid(config, cells, args.out, wrong_keys=args.wrong_keys, save_models=args.save_models)
    print(f"wrote {Path(args.out) / 'results.md'} and {Path(args.out) / 'accuracy_vs_block_size.png'}")
    return 0
