"""The ``kpfast`` command line: a lazy table of subcommands, one module each.

A command's module is imported only when that command runs (or shows its help), so ``kpfast
keygen`` and ``kpfast --help`` never import matplotlib, torchmetrics or the other extras. Each
module has ``add_arguments(parser, name)``, which adds its options and sets ``run``.

Errors: a :class:`~kpfast.errors.KpfastError` (a problem the user can fix) is printed as one line
and the exit status is 2 (3 when a run stopped at its time limit); Ctrl-C prints what was saved
and exits with 130. ``--debug`` re-raises either with its traceback. Any other exception is a bug
and keeps its traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from ..errors import KpfastError

# name -> ("module:function" that adds the command's arguments, one-line help)
COMMANDS = {
    "demo": ("kpfast.cli.demo:add_arguments", "the main job on an embedded synthetic data set"),
    "keygen": ("kpfast.cli.keygen:add_arguments", "generate a secret key set"),
    "encrypt": ("kpfast.cli.crypt:add_arguments", "encrypt a folder of images"),
    "decrypt": ("kpfast.cli.crypt:add_arguments", "decrypt a folder of images"),
    "train": ("kpfast.cli.train:add_arguments", "train a protected (or plain) model"),
    "eval": ("kpfast.cli.evaluate:add_arguments", "evaluate a model with the correct key, wrong keys and no key"),
    "reproduce": ("kpfast.cli.reproduce:add_arguments", "reproduce the published accuracy table (13 models)"),
    "i2p": ("kpfast.cli.i2p:add_arguments", "image to perturbation: key-free protected images and their attacks"),
    "bench": ("kpfast.cli.bench:add_arguments", "benchmark the fused transform"),
}
INTERRUPTED_EXIT = 130  # 128 + SIGINT, as shells report Ctrl-C


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `command`'s module is imported (the others appear by their help line)."""
    parser = argparse.ArgumentParser(prog="kpfast", description="Key-based block-wise image transforms.")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name, (target, help) in COMMANDS.items():
        if name != command:
            sub.add_parser(name, help=help, add_help=False)
            continue
        module_name, _, function = target.partition(":")
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help, description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error")
        getattr(module, function)(p, name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)  # the only top-level option is a flag
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    try:
        return args.run(args) or 0
    except KpfastError as e:
        if args.debug:
            raise
        print(f"kpfast {args.command}: {e.label}{e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        if args.debug:
            raise
        print(f"kpfast {args.command}: {e or 'interrupted'}", file=sys.stderr)
        return INTERRUPTED_EXIT


if __name__ == "__main__":
    sys.exit(main())
