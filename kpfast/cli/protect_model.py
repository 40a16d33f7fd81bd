"""kpfast protect-model / rekey: fold a secret key into a trained ViT or ConvMixer, without training.

protect-model takes a plain model (trained with --ops plain) and writes a protected one: fed
key-transformed images it computes what the plain model computes on plain images, and a wrong key
fails. The key file is read when it exists, else a fresh key (CSPRNG) is written there, mode 0600.
Foldable transforms: shuffle, negpos and (ViT only) scramble; FFX is refused (it is not affine).
A new scrambling key needs the image size (--image-size): it permutes the blocks of one grid.

rekey moves a protected model to another key (and, with --ops, another chain): the old key is
undone and the new one folded in; the old key then no longer works.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from ..errors import ConfigError, KeyMismatchError, OutputExistsError
from ..keys import KeySet
from ..plan import TRANSFORMS
from ..protection import ProtectedModel, experiment
from ..protection.model_transform import protect, rekey
from .options import names


def image_size(text: str) -> tuple[int, int]:
    """'32' -> (32, 32); '28x32' -> (28, 32) (height x width)."""
    try:
        sides = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        sides = ()
    if len(sides) not in (1, 2) or min(sides) < 1:
        raise argparse.ArgumentTypeError(f"expected a size in pixels like 32 or 28x32, got {text!r}")
    return (sides[0], sides[-1])


def chain(text: str) -> tuple[str, ...]:
    """'shuffle,negpos,scramble' -> ('shuffle', 'negpos', 'scramble'): known transform names, each once
    (ffx is accepted here so that folding it is refused with the reason)."""
    ops = names(text)
    bad = [o for o in ops if o not in TRANSFORMS]
    if not ops or bad or len(set(ops)) != len(ops):
        raise argparse.ArgumentTypeError(f"expected a comma list of {', '.join(TRANSFORMS)}, each at most once; "
                                         f"got {text!r}")
    return ops


def add_arguments(p: argparse.ArgumentParser, name: str) -> None:
    if name == "rekey":
        p.add_argument("--model", required=True, help="a protected model.pt")
        p.add_argument("--key", required=True, help="its key file")
        p.add_argument("--new-key", required=True, help="the new key file (written if absent, mode 0600)")
        p.add_argument("--ops", type=chain,
                       help="a new chain, e.g. shuffle,negpos (default: the model's)")
    else:
        p.add_argument("--model", required=True, help="a plain model.pt ('kpfast train --ops plain')")
        p.add_argument("--key", required=True, help="the key file (written if absent, mode 0600)")
        p.add_argument("--ops", required=True, type=chain,
                       help="the chain to fold, e.g. shuffle,negpos,scramble (any order)")
        p.add_argument("--image-size", type=image_size, metavar="H[xW]",
                       help="the images' size, for a new key that scrambles blocks (e.g. 32 or 28)")
    p.add_argument("--out", required=True, help="the protected model file to write")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.set_defaults(run=run_rekey if name == "rekey" else run_protect)


def _check_output(args: argparse.Namespace) -> None:
    if Path(args.out).resolve() == Path(args.model).resolve():
        raise ConfigError("--out is the input model: write the protected model to another file")
    if os.path.lexists(args.out) and not args.force:
        raise OutputExistsError(f"{args.out} exists; refusing to overwrite it (use --force)")


def _key(path: str, make) -> tuple[KeySet, bool]:
    """The key at ``path``, or a fresh one ``make()`` (saved by the caller once it is used); True if new."""
    return (KeySet.load(path), False) if os.path.lexists(path) else (make(), True)


def _grid(args: argparse.Namespace, block_size: int) -> tuple[int, int] | None:
    """The grid of blocks a new key scrambles (None: the chain does not scramble)."""
    if "scramble" not in args.ops:
        return None
    if args.image_size is None:
        raise ConfigError(f"scramble needs --image-size for the new key {args.key}: its block permutation is "
                          "made for one grid of blocks (e.g. --image-size 32 for CIFAR-10, 28 for Fashion-MNIST)")
    h, w = args.image_size
    if h % block_size or w % block_size:
        raise ConfigError(f"--image-size {h}x{w} is not divisible by the patch size {block_size}")
    return h // block_size, w // block_size


def _report(what: str, protected: ProtectedModel, args: argparse.Namespace, key_path: str, new_key: bool,
            seconds: float) -> None:
    chain = "+".join(protected.transform.ops)
    key = f"new key written to {key_path} (mode 0600)" if new_key else f"key {key_path}"
    print(f"wrote {args.out}: {what} with {chain} under {key}, fingerprint {protected.key_fingerprint}, "
          f"in {1000 * seconds:.1f} ms")


def _write(args: argparse.Namespace, done: str, fold, keys: KeySet, key_path: str, new_key: bool) -> None:
    """Fold the key into the weights (timed), then write the new key (if made here) and the model."""
    start = time.perf_counter()
    result = fold()
    seconds = time.perf_counter() - start
    if new_key:
        keys.save(key_path)
    result.save(args.out)
    _report(f"{type(result.model).__name__} {done}", result, args, key_path, new_key, seconds)


def run_protect(args: argparse.Namespace) -> int:
    _check_output(args)
    fingerprint = ProtectedModel.read(args.model, mmap=True)["key_fingerprint"]
    if fingerprint is not None:
        raise KeyMismatchError(f"{args.model} is already a protected model (key fingerprint {fingerprint}): "
                               "move it to another key with kpfast rekey")
    plain = ProtectedModel.load(args.model)
    model = plain.model
    block_size = getattr(model, "patch_size", None)
    if block_size is None:
        raise ConfigError(f"{args.model} holds a {type(model).__name__}: only models with a patch embedding "
                          "(vit, convmixer) can be protected without training")
    keys, new = _key(args.key, lambda: KeySet.generate(block_size, model.in_channels, grid=_grid(args, block_size)))
    # protect checks everything before a file is written
    _write(args, "protected", lambda: protect(plain, keys, args.ops), keys, args.key, new)
    return 0


def run_rekey(args: argparse.Namespace) -> int:
    _check_output(args)
    protected, keys = experiment.load_protected(args.model, args.key, "cpu")
    if keys is None:
        raise KeyMismatchError(f"{args.model} is a plain model: protect it with kpfast protect-model")
    new_keys, new = _key(args.new_key, lambda: KeySet.generate(keys.block_size, keys.channels, grid=keys.grid))
    if new_keys == keys:
        raise ConfigError(f"{args.new_key} holds the model's current key: give another key file")
    _write(args, "re-keyed", lambda: rekey(protected, keys, new_keys, args.ops), new_keys, args.new_key, new)
    return 0
