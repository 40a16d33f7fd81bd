"""kpfast demo: the whole idea in two minutes on a CPU, with no download.

1. a deterministic synthetic image set (generated in code) and a fresh secret key;
2. a picture: plain | shuffle | NP | FFX | all three, with the exact inverse round trip checked;
3. the fused op against the reference-style torch peer and a plain uint8 -> float copy;
4. a small CNN trained on key-protected images, evaluated with the correct key, with fresh
   wrong keys and on plain images: only the key holder gets the accuracy.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from .. import bench
from ..data import DeviceLoader, make_synthetic
from ..evaluate import evaluate_protection, format_markdown, write_json
from ..grid import save_grid
from ..keys import KeySet
from ..models import create_model
from ..protected import ProtectedModel
from ..train import train
from ..transforms import BlockTransform

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
CHAIN = ("shuffle", "negpos", "ffx")


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="the main job on an embedded synthetic data set", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="kpfast-demo", help="folder for the picture, model and results")
    p.add_argument("--block-size", "-M", type=int, default=4)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--train-size", type=int, default=5000)
    p.add_argument("--test-size", type=int, default=1000)
    p.add_argument("--wrong-keys", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="a tiny run (smoke test)")
    p.set_defaults(run=run)


def picture(out: Path, keys: KeySet, images: torch.Tensor) -> Path:
    columns, titles = [images], ["plain"]
    for ops, title in ((("shuffle",), "shuffle"), (("negpos",), "NP"), (("ffx",), "FFX"), (CHAIN, "all three")):
        t = BlockTransform(keys, ops, rounding="nearest")
        protected = t(images)
        restored = torch.round(t.inverse(protected) * 255).to(torch.uint8)
        if not torch.equal(restored, images):
            raise RuntimeError(f"inverse round trip of {title} is not exact")
        columns.append(protected)
        titles.append(title)
    return save_grid(out / "transforms.png", columns, titles)


def run(args: argparse.Namespace) -> int:
    if args.quick:
        args.train_size, args.test_size, args.epochs, args.wrong_keys = 1000, 200, 1, 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    train_set, test_set = make_synthetic(args.train_size, args.test_size)
    keys = KeySet.generate(args.block_size, channels=3)
    print(f"data: synthetic, {len(train_set)} train / {len(test_set)} test images, 10 classes")
    print(f"key: {keys!r} (fresh, from the OS CSPRNG)")

    grid = picture(out, keys, test_set.images[:8])
    print(f"picture: {grid} (plain | shuffle | NP | FFX | all three); inverse round trips exact")

    print("\nthroughput (" + ("CUDA" if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads") + "):")
    rows = bench.run(bench.CASES[:1], device=args.device, repeats=3, peer_repeats=1)
    print(bench.format_table(rows))

    print(f"\ntraining a protected small CNN on {'+'.join(CHAIN)} images (M={args.block_size}, {args.epochs} epochs):")
    make_transform = lambda k: BlockTransform(k, CHAIN, MEAN, STD)  # noqa: E731
    loader = DeviceLoader(train_set, 128, device=args.device, shuffle=True, augment=True, seed=0)
    model = create_model("small_cnn", num_classes=train_set.num_classes)
    train(model, make_transform(keys), loader, epochs=args.epochs, lr=0.1, label_smoothing=0.1,
          device=args.device, progress=True)
    results = evaluate_protection(model, make_transform, keys, test_set, wrong_keys=args.wrong_keys,
                                  device=args.device)
    print("\n" + format_markdown(results))
    write_json(results, out / "results.json")
    ProtectedModel(model, make_transform(keys)).save(out / "model.pt")
    keys.save(out / "demo.key")
    print(f"\nwrote {out}/: transforms.png, results.json, model.pt (weights, no key), demo.key (mode 0600)")
    print(f"done in {time.perf_counter() - started:.0f} s")
    return 0
