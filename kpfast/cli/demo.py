"""kpfast demo: the whole idea in two minutes on a CPU, with no download.

1. a deterministic synthetic image set (generated in code) and a fresh secret key;
2. a picture: plain | shuffle | NP | FFX | all three, with the exact inverse round trip checked;
3. the fused op against a plain uint8 -> float copy of the same images (the memory floor);
4. a small CNN trained on key-protected images (the same run as `kpfast train`), evaluated with
   the correct key, with fresh wrong keys and on plain images: only the key holder gets the
   accuracy.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ..atomic import write_json
from ..data import make_synthetic
from ..engine.device import device_name, resolve_device
from ..errors import DataError, OutputExistsError
from ..keys import KeySet
from ..plan import IN_BLOCK_TRANSFORMS
from ..protection.evaluate import format_markdown
from ..protection.experiment import RunConfig, evaluate_model, train_run
from ..report import bench
from ..report.grid import save_grid
from ..report.tables import TRANSFORM_LABELS
from ..transforms import BlockTransform
from .options import add_device, positive_int


def add_arguments(p: argparse.ArgumentParser, name: str) -> None:
    p.add_argument("--out", help=f"new or empty folder for the picture, model, key and results (default: "
                   f"{DEFAULT_OUT}, or {DEFAULT_OUT}-2, -3, ... if that one holds an earlier demo)")
    p.add_argument("--block-size", "-M", type=positive_int, default=4,
                   help="block size M of the key, dividing 32 (default: 4)")
    p.add_argument("--epochs", type=positive_int, default=4, help="training epochs of the small CNN (default: 4)")
    p.add_argument("--train-size", type=positive_int, default=5000, help="synthetic training images (default: 5000)")
    p.add_argument("--test-size", type=positive_int, default=1000, help="synthetic test images (default: 1000)")
    p.add_argument("--wrong-keys", type=positive_int, default=5,
                   help="fresh random wrong keys the model is evaluated with (default: 5)")
    add_device(p)
    p.add_argument("--quick", action="store_true",
                   help="a tiny run (smoke test): 1000 / 200 images, 1 epoch, 2 wrong keys")
    p.set_defaults(run=run)


DEFAULT_OUT = "kpfast-demo"


def output_folder(out: str | None) -> Path:
    """Where this demo writes: --out if it is new or empty (a clear error otherwise, before any
    work), else the first of kpfast-demo, kpfast-demo-2, ... that is new or empty."""
    if out is not None:
        folder = Path(out)
        if folder.exists() and not folder.is_dir():
            raise OutputExistsError(f"--out {folder} exists and is not a folder: choose a new folder")
        if folder.is_dir() and any(folder.iterdir()):
            held = sorted(p.name for p in folder.iterdir())
            shown = ", ".join(held[:4]) + (f", ... ({len(held)} entries)" if len(held) > 4 else "")
            raise OutputExistsError(f"--out {folder} is not empty (it holds {shown}); the demo writes a fresh key "
                                    "and model and never replaces files: choose a new or empty folder")
        return folder
    for n in range(1, 1000):
        folder = Path(DEFAULT_OUT if n == 1 else f"{DEFAULT_OUT}-{n}")
        if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
            return folder
    raise OutputExistsError(f"{DEFAULT_OUT} to {DEFAULT_OUT}-999 all exist: pass --out NEW_FOLDER")


def picture(out: Path, keys: KeySet, images: torch.Tensor) -> Path:
    columns, titles = [images], ["plain"]
    chains = [((op,), TRANSFORM_LABELS[op]) for op in IN_BLOCK_TRANSFORMS] + [(IN_BLOCK_TRANSFORMS, "all three")]
    for ops, title in chains:
        t = BlockTransform(keys, ops, rounding="nearest")
        protected = t(images)
        restored = torch.round(t.inverse(protected) * 255).to(torch.uint8)
        if not torch.equal(restored, images):
            raise RuntimeError(f"inverse round trip of {title} is not exact")  # a bug, never the user's doing
        columns.append(protected)
        titles.append(title)
    return save_grid(out / "transforms.png", columns, titles)


def run(args: argparse.Namespace) -> int:
    if args.quick:
        args.train_size, args.test_size, args.epochs, args.wrong_keys = 1000, 200, 1, 2
    device = resolve_device(args.device)
    if 32 % args.block_size:
        raise DataError(f"block size {args.block_size} does not divide the 32x32 images of the synthetic set")
    out = output_folder(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    train_set, test_set = make_synthetic(args.train_size, args.test_size)
    keys = KeySet.generate(args.block_size, channels=3)
    print(f"data: synthetic, {len(train_set)} train / {len(test_set)} test images, 10 classes")
    print(f"key: {keys!r} (fresh, from the OS CSPRNG)")

    grid = picture(out, keys, test_set.images[:8])
    print(f"picture: {grid} (plain | shuffle | NP | FFX | all three); inverse round trips exact")

    print(f"\nthroughput ({device_name(device)}):")
    print(bench.format_table(bench.run(bench.CASES[:1], device=device, repeats=3)))

    config = RunConfig(data="synthetic", model="small_cnn", ops=IN_BLOCK_TRANSFORMS, block_size=args.block_size,
                       epochs=args.epochs, device=str(device))
    print(f"\ntraining a protected small CNN on {'+'.join(IN_BLOCK_TRANSFORMS)} images (M={args.block_size}, "
          f"{args.epochs} epochs):")
    protected, _ = train_run(config, train_set, keys)
    results = evaluate_model(protected, keys, test_set.to(device), wrong_keys=args.wrong_keys, device=device)
    print("\n" + format_markdown(results))
    write_json(out / "results.json", results)
    protected.save(out / "model.pt")
    keys.save(out / "demo.key")  # the demo's own fresh key, beside its own fresh model
    print(f"\nwrote {out}/: transforms.png, results.json, model.pt (weights, no key), demo.key (mode 0600)")
    print(f"done in {time.perf_counter() - started:.0f} s")
    return 0
