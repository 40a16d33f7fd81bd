"""kpfast keygen: a fresh secret key set (CSPRNG) written owner-only."""
from __future__ import annotations

import argparse
import os

from ..errors import OutputExistsError
from ..keys import KeySet
from .options import positive_int


def add_arguments(p: argparse.ArgumentParser, name: str) -> None:
    p.add_argument("output", help="key file to write (mode 0600)")
    p.add_argument("--block-size", "-M", type=positive_int, default=4)
    p.add_argument("--channels", "-C", type=positive_int, default=3)
    p.add_argument("--force", action="store_true", help="overwrite an existing key file")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if os.path.lexists(args.output) and not args.force:
        raise OutputExistsError(f"{args.output} exists; refusing to overwrite a key (use --force)")
    keys = KeySet.generate(args.block_size, args.channels)
    keys.save(args.output, overwrite=args.force)
    print(f"wrote {args.output}: {keys!r}")
    return 0
