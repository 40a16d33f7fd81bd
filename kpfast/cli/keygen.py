"""kpfast keygen: a fresh secret key set (CSPRNG) written owner-only.

The key holds one shuffle permutation, negative/positive flags and FFX tables for each of the
M x M x C pixel values of a block, so its size grows with M squared (0.6 KB at M = 4, 0.5 MB
at M = 128; M x M x C is at most kpfast.keys.MAX_POSITIONS). Block sizes above 64 are rarely what one means (the papers
use M <= 16 on 32 x 32 images) and ask for --force.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import ConfigError, KeyFileError, OutputExistsError
from .options import positive_int

LARGEST_BLOCK = 64  # above this, --force: a key of megabytes is more often a typo than a choice


def add_arguments(p: argparse.ArgumentParser, name: str) -> None:
    p.add_argument("output", help="key file to write (mode 0600)")
    p.add_argument("--block-size", "-M", type=positive_int, default=4,
                   help="block size M: the transforms work on M x M blocks, so M must divide the image size "
                        f"(default: 4; above {LARGEST_BLOCK} needs --force)")
    p.add_argument("--channels", "-C", type=positive_int, default=3,
                   help="colour channels of the images: 3 for RGB, 1 for grey (default: 3)")
    p.add_argument("--force", action="store_true",
                   help=f"overwrite an existing key file; allow a block size above {LARGEST_BLOCK}")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    target = Path(args.output)
    check_target(target, args.force)
    from ..keys import KeySet, num_positions  # torch: only once the target is known to be writable

    entries = num_positions(args.block_size, args.channels)  # refuses a key beyond kpfast's limit
    if args.block_size > LARGEST_BLOCK and not args.force:
        raise ConfigError(f"-M {args.block_size} makes {args.block_size}x{args.block_size} blocks: a key of "
                          f"{entries:,} entries (about {key_file_bytes(entries) / 1e6:.1f} MB) that only images of "
                          f"at least {args.block_size}x{args.block_size} pixels can use; pass --force if that is "
                          "what you mean")
    keys = KeySet.generate(args.block_size, args.channels)
    try:
        keys.save(target, overwrite=args.force)
    except OSError as e:  # the temporary file's name means nothing to the user: name the target
        raise KeyFileError(f"cannot write the key to {target}: {e.strerror or e}") from None
    print(f"wrote {target}: {keys!r}")
    return 0


def check_target(target: Path, force: bool) -> None:
    """A clear error, before any work, if the key cannot be written to `target`."""
    if target.is_dir():
        raise OutputExistsError(f"{target} is a folder: give the key file's name, e.g. {target / 'my.key'}")
    if os.path.lexists(target) and not force:
        raise OutputExistsError(f"{target} exists; refusing to overwrite a key (use --force)")
    folder = target.parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise KeyFileError(f"cannot write the key to {target}: the folder {folder} {what}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise KeyFileError(f"cannot write the key to {target}: the folder {folder} is not writable")


def key_file_bytes(entries: int) -> int:
    """Roughly what a key file of `entries` positions weighs: a line per permutation entry (its
    digits, indent, comma, newline) and a character per entry of each of the two bit masks."""
    return entries * (len(str(entries - 1)) + 4 + 2)
