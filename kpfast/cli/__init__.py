"""The ``kpfast`` command line: one module per subcommand, each with ``add_parser`` and ``run``."""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ("demo", "keygen", "encrypt", "decrypt", "train", "eval", "reproduce", "i2p", "bench")
_MODULES = {"keygen": "keygen", "encrypt": "crypt", "decrypt": "crypt", "bench": "bench", "demo": "demo",
            "train": "train", "eval": "evaluate", "reproduce": "reproduce", "i2p": "i2p"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kpfast", description="Key-based block-wise image transforms.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name in COMMANDS:
        module = importlib.import_module(f"kpfast.cli.{_MODULES[name]}")
        module.add_parser(sub, name)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except (ValueError, OSError, RuntimeError) as e:  # a clear message, not a traceback
        print(f"kpfast {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
