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
import contextlib
import importlib
import io
import os
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
    "protect-model": ("kpfast.cli.protect_model:add_arguments", "fold a key into a trained ViT or ConvMixer (no training)"),
    "rekey": ("kpfast.cli.protect_model:add_arguments", "move a protected model to a new key"),
    "reproduce": ("kpfast.cli.reproduce:add_arguments", "reproduce the published accuracy table (13 models)"),
    "i2p": ("kpfast.cli.i2p:add_arguments", "image to perturbation: key-free protected images and their attacks"),
    "attack": ("kpfast.cli.attack:add_arguments", "attack a protected model: key search, key estimation, fine-tuning, ..."),
    "audit": ("kpfast.cli.audit:add_arguments", "the whole security evaluation of a protected model, one report"),
    "bench": ("kpfast.cli.bench:add_arguments", "benchmark the fused transform"),
}
INTERRUPTED_EXIT = 130  # 128 + SIGINT, as shells report Ctrl-C


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `command`'s module is imported (the others appear by their help line)."""
    parser = argparse.ArgumentParser(prog="kpfast", description="Key-based block-wise image transforms.")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    parser.add_argument("--version", action="version", version=version_line(),
                        help="show kpfast's version and the torch it was built against, and exit")
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


def version_line() -> str:
    """'kpfast 0.2.0+pt213cpu (built against torch 2.13.0+cpu, CUDA none)': the installed
    distribution's version, whose local part names the torch of the build."""
    from importlib import metadata

    from .. import __version__, build_info

    try:
        version = metadata.version("kpfast")
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        version = __version__
    info = build_info()
    return f"kpfast {version} (built against torch {info['torch_version']}, CUDA {info['cuda_version'] or 'none'})"


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``parser.parse_args(argv)``. Under a launcher every rank parses the same command line, so
    only rank 0 prints a usage error or the help (the others exit with the same status, silently)."""
    if not {"RANK", "WORLD_SIZE", "SLURM_NTASKS"} & os.environ.keys():
        return parser.parse_args(argv)  # no launcher: `kpfast --help` imports nothing more
    from ..engine.distributed import launch_env
    from ..errors import ConfigError
    try:
        launch = launch_env()
    except ConfigError:
        launch = None  # a broken launcher environment is reported by the run itself
    if launch is None or launch.rank == 0:
        return parser.parse_args(argv)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)  # the only top-level option is a flag
    args = _parse(build_parser(command if command in COMMANDS else None), argv)
    try:
        return args.run(args) or 0
    except KpfastError as e:
        if args.debug:
            raise
        from ..engine.ranks import echoes_main
        if not echoes_main(e):  # rank 0 already reported it: one line per job, not per rank
            print(f"kpfast {args.command}: {e.label}{e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        if args.debug:
            raise
        print(f"kpfast {args.command}: {e or 'interrupted'}", file=sys.stderr)
        return INTERRUPTED_EXIT


if __name__ == "__main__":
    sys.exit(main())
