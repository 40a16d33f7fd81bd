"""kpfast keygen: a fresh secret key set (CSPRNG) written owner-only."""
from __future__ import annotations

import argparse
import os

from ..keys import KeySet


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="generate a secret key set", description=__doc__)
    p.add_argument("output", help="key file to write (mode 0600)")
    p.add_argument("--block-size", "-M", type=int, default=4)
    p.add_argument("--channels", "-C", type=int, default=3)
    p.add_argument("--force", action="store_true", help="overwrite an existing key file")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if os.path.exists(args.output) and not args.force:
        raise ValueError(f"{args.output} exists; refusing to overwrite a key (use --force)")
    keys = KeySet.generate(args.block_size, args.channels)
    keys.save(args.output)
    print(f"wrote {args.output}: {keys!r}")
    return 0
