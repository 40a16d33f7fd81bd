"""kpfast encrypt / decrypt: a folder of images to protected images and back, exactly.

encrypt writes every image under INPUT (searched recursively; hidden files and folders skipped)
as <name>.png at the same place under OUTPUT, then kpfast-manifest.json: the chain, the key's
fingerprint (never the key), how codes are stored, the list of files and the statistics of the
plain training images. Chains without FFX give 8-bit PNGs of the protected bytes; with FFX,
16-bit PNGs of the codes (up to max(ffx_lut) <= 999), spread over the 16-bit range so that
image viewers show them. decrypt returns the very pixels encrypt read, as PNG.

A protected folder is a data set: an INPUT laid out as train/<class>/* and test/<class>/*
gives an OUTPUT with the same layout, which kpfast reads as protected values and normalises as
its manifest says, e.g. 'kpfast train --data OUTPUT --ops plain'.

Images are read exactly or not at all: grey, grey+alpha, RGB and RGBA images round-trip bit for
bit with a key of 1, 2, 3 or 4 channels (kpfast keygen --channels); palette and 1-bit images are
their 8-bit pixels, JPEGs their decoded pixels. An image the key cannot hold as it is (an alpha
channel, grey for a colour key or colour for a grey one, 16 bits per channel, CMYK) is refused by
name before anything is written, unless --convert (16-bit values then keep their high byte, and
decrypt gives the converted image). Two inputs that would give one output name (photo.png,
photo.bmp) are refused: rename one.

Nothing is overwritten unasked: OUTPUT must be new or empty and apart from INPUT, unless --force
(which writes into it, replacing files of the same name). Even with --force, kpfast never
replaces an input file (decrypting in place could then decrypt plain images) and never writes
into, above or below another encrypted set. An interrupted run leaves complete images and no
manifest: run it again with --force.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch

from ..data.protected_folder import MANIFEST, Manifest
from ..data.stats import Stats, channel_stats
from ..errors import ConfigError, DataError, DataNotFoundError, Interrupted, OutputExistsError
from ..keys import KeySet
from ..plan import IN_BLOCK_TRANSFORMS
from ..report.imageio import (MODES, conversion_problem, is_hidden, list_images, open_image, read_image, read_png,
                              stored_mode, write_png)
from ..report.progress import bar
from ..transforms import BlockTransform


def add_arguments(p: argparse.ArgumentParser, name: str) -> None:
    p.add_argument("input", help="folder of images (searched recursively)" if name == "encrypt"
                   else "folder written by 'kpfast encrypt'")
    p.add_argument("output", help="new or empty folder to write to (mirrors the input's sub-folders)")
    p.add_argument("--key", required=True, help="key file from 'kpfast keygen'")
    if name == "encrypt":
        p.add_argument("--ops", default="shuffle,negpos,ffx",
                       help="comma-separated chain of shuffle, negpos, ffx (default: all three)")
        p.add_argument("--convert", action="store_true",
                       help="convert images the key cannot hold exactly (alpha, grey/colour, 16-bit, CMYK) to "
                            "its 8-bit mode instead of refusing them; decrypt then gives the converted image")
    p.add_argument("--force", action="store_true",
                   help="write into a folder that is not empty or overlaps the input (files of the same name are "
                        "replaced; input files and other encrypted sets never are)")
    p.set_defaults(run=encrypt if name == "encrypt" else decrypt)


def encrypt(args: argparse.Namespace) -> int:
    keys = KeySet.load(args.key)
    ops = tuple(o.strip() for o in args.ops.split(",") if o.strip())
    if not ops or any(o not in IN_BLOCK_TRANSFORMS for o in ops) or len(set(ops)) != len(ops):
        raise ConfigError(f"--ops must list some of {', '.join(IN_BLOCK_TRANSFORMS)}, each at most once, "
                          f"got {args.ops!r}")
    src, dst = Path(args.input), Path(args.output)
    s, d = src.resolve(), dst.resolve()
    inner = dst if d != s and d.is_relative_to(s) else None  # an output inside the input is left out of it
    _refuse_encrypted_set(src, "input", exclude=inner)
    _refuse_encrypted_set(dst, "output")
    sources = list_images(src, exclude=inner)
    names = _output_names(src, dst, sources)
    _check_output(src, dst, sources, [dst / n for n in names], args.force)
    converted = _check_images(sources, keys, args.convert)

    manifest = Manifest.for_chain(keys, ops, names)
    # Rounding to nearest keeps every byte recoverable (the reference's floor loses some after NP).
    transform = BlockTransform(keys, ops, rounding="nearest")
    train_names, test_names = _training_split(names)
    plain_train = []
    done = 0
    try:
        for path, name in bar(list(zip(sources, names)), desc="encrypt", unit="img"):
            image = torch.from_numpy(read_image(path, keys.channels, convert=args.convert).copy())
            # numpy, not torch, for per-image arithmetic: torch's thread pool costs ms per call on a busy CPU
            codes = np.rint(transform(image).numpy().astype(np.float64) * manifest.code_scale).astype(np.int64)
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            write_png(dst / name, manifest.encode(codes), manifest.bitdepth)
            if name in train_names:
                plain_train.append(image)
            done += 1
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted after {done} of {len(names)} images: {dst} holds only complete images and "
                          "no manifest yet; run the same command with --force to encrypt them all") from None
    manifest = dataclasses.replace(manifest, normalization=_plain_stats(plain_train))
    manifest.write(dst)

    if converted:
        print(f"converted {len(converted)} image(s) (--convert), which decrypt gives back converted: "
              + ", ".join(converted[:3]) + (", ..." if len(converted) > 3 else ""))
    what = (f"a training set of {len(train_names)} train and {len(test_names)} test images: train on it "
            f"with 'kpfast train --data {dst} --ops plain'" if manifest.normalization else
            "not a training set (that needs train/<class>/ and test/<class>/ with images of one size)")
    print(f"encrypted {len(names)} images into {dst} ({manifest.bitdepth}-bit PNG, ops={','.join(ops)}, "
          f"key {keys.fingerprint()}); {what}")
    return 0


def decrypt(args: argparse.Namespace) -> int:
    keys = KeySet.load(args.key)
    src, dst = Path(args.input), Path(args.output)
    if not src.is_dir():
        raise DataNotFoundError(f"{src} is not a folder")
    manifest = Manifest.read(src)
    manifest.check_key(keys, args.key, src)
    found = [p.relative_to(src).as_posix() for p in list_images(src)]
    names = list(manifest.files) if manifest.files is not None else found  # version 1 kept no list
    missing = sorted(set(names) - set(found))
    if missing:
        raise DataError(f"{src}: its manifest lists {src / missing[0]}, which is missing ({len(missing)} in all); "
                        "restore it from where the set came from")
    _refuse_encrypted_set(dst, "output")
    _check_output(src, dst, [src / n for n in names], [dst / n for n in names], args.force)

    transform = BlockTransform(keys, manifest.ops, rounding="nearest")
    done = 0
    try:
        for name in bar(names, desc="decrypt", unit="img"):
            samples, bitdepth = read_png(src / name)
            y = torch.from_numpy(manifest.decode(samples, bitdepth, src / name)).float() / manifest.code_scale
            x = np.rint(transform.inverse(y).numpy() * 255).astype(np.uint8)
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            write_png(dst / name, x, 8)
            done += 1
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted after {done} of {len(names)} images: {dst} holds only complete images; "
                          "run the same command with --force to decrypt them all") from None
    extra = sorted(set(found) - set(names))
    note = (f"; left out {len(extra)} image(s) its manifest does not list, e.g. {src / extra[0]}" if extra else "")
    print(f"decrypted {len(names)} images into {dst}{note}")
    return 0


# --- what is written where -----------------------------------------------------------------


def _output_names(src: Path, dst: Path, sources: list[Path]) -> list[str]:
    """The output name of every input (<name>.png, relative, posix); two inputs that would share
    one (photo.png and photo.bmp; names equal but for case, which collide on some file systems)
    are refused."""
    names = [path.relative_to(src).with_suffix(".png").as_posix() for path in sources]
    first: dict[str, Path] = {}
    for path, name in zip(sources, names):
        other = first.setdefault(name.casefold(), path)
        if other != path:
            raise DataError(f"{other} and {path} would both be written as {dst / name}: kpfast encrypt writes "
                            "every image as <name>.png, so rename one of them")
    return names


def _check_output(src: Path, dst: Path, inputs: list[Path], outputs: list[Path], force: bool) -> None:
    """Refuse an output that is not a new or empty folder apart from the input, unless `force`;
    refuse always to replace an input file."""
    if dst.exists() and not dst.is_dir():
        raise OutputExistsError(f"{dst} exists and is not a folder: choose a folder to write to")
    s, d = src.resolve(), dst.resolve()
    if not force:
        if d == s:
            raise ConfigError(f"the output folder {dst} is the input folder: choose another one (or pass --force to "
                              "write into it; input files are never replaced)")
        if d.is_relative_to(s):
            raise ConfigError(f"the output folder {dst} lies inside the input folder {src}: choose one outside it, "
                              "or pass --force (it is then left out of the input)")
        if s.is_relative_to(d):
            raise ConfigError(f"the input folder {src} lies inside the output folder {dst}: choose another output "
                              "folder, or pass --force")
        existing = next((p for p in sorted(dst.rglob("*")) if p.is_file() and not is_hidden(p.relative_to(dst))),
                        None) if d.is_dir() else None
        if existing is not None:
            raise OutputExistsError(f"the output folder {dst} is not empty (it holds {existing}): choose a new or "
                                    "empty folder, or pass --force to write into it (files of the same name are "
                                    "replaced)")
    replaced = sorted({o.resolve() for o in outputs} & {i.resolve() for i in inputs})
    if replaced:
        raise OutputExistsError(f"writing into {dst} would replace the input {replaced[0]}: choose an output folder "
                                "apart from the input (kpfast never replaces an input, not even with --force)")


def _refuse_encrypted_set(folder: Path, role: str, exclude: Path | None = None) -> None:
    """Refuse a folder that is, lies inside or holds (outside `exclude`) a set written by
    ``kpfast encrypt``: an input would be encrypted twice, an output would mix two sets."""
    f, skip = folder.resolve(), exclude.resolve() if exclude is not None else None
    found = next((c for c in (f, *f.parents) if (c / MANIFEST).is_file()), None)
    if found is None and f.is_dir():
        found = next((m.parent for m in sorted(f.rglob(MANIFEST))
                      if skip is None or not m.resolve().is_relative_to(skip)), None)
    if found is None:
        return
    where = "is" if found == f else "lies inside" if f.is_relative_to(found) else "holds"
    name = folder if found == f else found
    try:
        what = f"the encrypted set {name} ({Manifest.read(found).describe()})"
    except DataError:  # damaged: still not a place to write to
        what = f"{name}, which holds a kpfast manifest"
    if role == "input":
        raise DataError(f"the input folder {folder} {where} {what}: its images are protected already; decrypt "
                        "them first, or choose the plain folder")
    raise OutputExistsError(f"the output folder {folder} {where} {what}; kpfast never writes into, above or below "
                            "an encrypted set, not even with --force (it would mix other images into it): choose "
                            "another output folder")


def _check_images(sources: list[Path], keys: KeySet, convert: bool) -> list[str]:
    """Before anything is written: refuse images the blocks do not tile, and those the key's
    channel count cannot hold exactly unless `convert`. Returns the conversions, for the report."""
    M, converted, problems = keys.block_size, [], []
    for path in sources:
        with open_image(path) as im:  # the header only: nothing is decoded yet
            width, height = im.size
            problem = conversion_problem(im, keys.channels)
            stored = stored_mode(im)
        if width % M or height % M:
            raise DataError(f"{path} is {width}x{height}, which {M}x{M} blocks do not tile: crop or pad it to "
                            f"multiples of {M}, or use a key with another block size")
        if problem is not None:
            problems.append(f"{path} {problem}")
            converted.append(f"{path} ({stored} to {MODES[keys.channels]})")
    if problems and not convert:
        more = f" ({len(problems) - 1} more image(s) like it)" if len(problems) > 1 else ""
        raise DataError(problems[0] + more)
    return converted


def _training_split(names: list[str]) -> tuple[set[str], set[str]]:
    """The (train, test) files when `names` form a train/<class>/, test/<class>/ layout, else empty."""
    from ..data.folders import _layout

    try:
        tree = _layout(Path("."), names)
    except DataError:
        return set(), set()
    return tuple({f for files in tree[split].values() for f in files} for split in ("train", "test"))


def _plain_stats(images: list[torch.Tensor]) -> Stats | None:
    """The statistics of the plain training images, or None when there are none or their sizes
    differ (no training set: the loader refuses it)."""
    if not images or any(x.shape != images[0].shape for x in images):
        return None
    return channel_stats(torch.stack(images), f"computed from the {len(images)} plain training images")
