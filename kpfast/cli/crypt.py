"""kpfast encrypt / decrypt: a folder of images to protected images and back, exactly.

Chains without FFX map bytes to bytes (8-bit PNG). With FFX, values become codes of up to
max(lut) <= 999 levels, stored as 16-bit PNG. A manifest beside the images records the chain and
the key's fingerprint (never the key), so decryption checks it is given the right key.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..atomic import write_json
from ..errors import ConfigError, DataError, KeyMismatchError
from ..keys import KeySet
from ..plan import TRANSFORMS
from ..report.imageio import list_images, read_image, read_png_codes, write_png
from ..report.progress import bar
from ..transforms import BlockTransform

MANIFEST = "kpfast-manifest.json"


def add_arguments(p: argparse.ArgumentParser, name: str) -> None:
    p.add_argument("input", help="folder of images (searched recursively)")
    p.add_argument("output", help="folder to write to (mirrors the input's sub-folders)")
    p.add_argument("--key", required=True, help="key file from 'kpfast keygen'")
    if name == "encrypt":
        p.add_argument("--ops", default="shuffle,negpos,ffx",
                       help="comma-separated chain of shuffle, negpos, ffx (default: all three)")
    p.set_defaults(run=encrypt if name == "encrypt" else decrypt)


def _code_scale(ops: tuple[str, ...], keys: KeySet) -> int:
    # Values are multiples of 1/255 until FFX, of 1/max(lut) after it.
    return keys.ffx_max if "ffx" in ops else 255


def encrypt(args: argparse.Namespace) -> int:
    keys = KeySet.load(args.key)
    ops = tuple(o.strip() for o in args.ops.split(",") if o.strip())
    if not ops or any(o not in TRANSFORMS for o in ops) or len(set(ops)) != len(ops):
        raise ConfigError(f"--ops must list some of {', '.join(TRANSFORMS)}, each at most once, got {args.ops!r}")
    # Rounding to nearest keeps every byte recoverable (the reference's floor loses some after NP).
    transform = BlockTransform(keys, ops, rounding="nearest")
    scale, bitdepth = _code_scale(ops, keys), 16 if "ffx" in ops else 8
    src, dst = Path(args.input), Path(args.output)
    files = list_images(src)
    for path in bar(files, desc="encrypt", unit="img"):
        image = torch.from_numpy(read_image(path, keys.channels).copy())
        try:
            y = transform(image)
        except ValueError as e:
            raise DataError(f"{path}: {e}") from None
        codes = torch.round(y.double() * scale).to(torch.int64).numpy()
        out = (dst / path.relative_to(src)).with_suffix(".png")
        out.parent.mkdir(parents=True, exist_ok=True)
        write_png(out, codes, bitdepth)
    write_json(dst / MANIFEST, {"format": "kpfast-encrypted-images", "version": 1, "ops": list(ops),
                                "block_size": keys.block_size, "channels": keys.channels,
                                "key_fingerprint": keys.fingerprint(), "code_scale": scale, "bitdepth": bitdepth})
    print(f"encrypted {len(files)} images into {dst} ({bitdepth}-bit PNG, ops={','.join(ops)})")
    return 0


def decrypt(args: argparse.Namespace) -> int:
    keys = KeySet.load(args.key)
    src, dst = Path(args.input), Path(args.output)
    try:
        manifest = json.loads((src / MANIFEST).read_text())
        ops, scale, fingerprint = tuple(manifest["ops"]), int(manifest["code_scale"]), manifest["key_fingerprint"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{src / MANIFEST} is missing or unreadable ({e}); was {src} written by 'kpfast encrypt'?") from None
    if fingerprint != keys.fingerprint():
        raise KeyMismatchError(f"wrong key: the images were encrypted with key {fingerprint}, "
                         f"{args.key} is key {keys.fingerprint()}")
    transform = BlockTransform(keys, ops, rounding="nearest")
    files = list_images(src)
    for path in bar(files, desc="decrypt", unit="img"):
        codes = read_png_codes(path)
        if codes.shape[0] != keys.channels or codes.max(initial=0) > scale:
            raise DataError(f"{path}: not an image encrypted with this chain ({codes.shape[0]} channels, "
                             f"codes up to {codes.max(initial=0)})")
        y = torch.from_numpy(codes).float() / scale
        x = torch.round(transform.inverse(y) * 255).to(torch.uint8).numpy()
        out = dst / path.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_png(out, x, 8)
    print(f"decrypted {len(files)} images into {dst}")
    return 0
