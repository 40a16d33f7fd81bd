"""kpfast eval: how well does the key protect a trained model?

Accuracy on the test set with the correct key, with --wrong-keys fresh random keys (mean, min,
max) and on plain images (an attacker without the key), plus per-class accuracy. A plain model
(trained with --ops plain) is evaluated on plain images only. Prints a Markdown table and writes
results.json and results.md to --out; they hold key fingerprints, never keys.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..atomic import write_json, write_text
from ..engine.device import device_name, resolve_device
from ..errors import DataError
from ..protection import experiment
from ..protection.evaluate import format_markdown
from .options import add_device, positive_int


def add_arguments(p: argparse.ArgumentParser, name: str) -> None:
    p.add_argument("--model", required=True, help="model.pt written by 'kpfast train'")
    p.add_argument("--key", help="the model's key file (omit for a plain model)")
    p.add_argument("--data", required=True,
                   help="the data set the model was trained on: synthetic | cifar10 | fashion-mnist | "
                        "path of an image folder or zip")
    p.add_argument("--data-root", help="folder of the data set's files (cifar10, fashion-mnist)")
    p.add_argument("--test-subset", type=positive_int, metavar="N",
                   help="test on the first N images (balanced classes)")
    p.add_argument("--wrong-keys", type=positive_int, default=10, help="number of random wrong keys (default: 10)")
    p.add_argument("--batch-size", type=positive_int, default=500, help="images per evaluation batch (default: 500)")
    add_device(p)
    p.add_argument("--out", help="results folder (default: eval/ beside the model)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    protected, keys = experiment.load_protected(args.model, args.key, device)
    config = experiment.RunConfig(data=args.data, data_root=args.data_root, test_subset=args.test_subset)
    _, test_set = experiment.load_data(config)
    shape = tuple(test_set.images.shape[1:])
    model = protected.model
    if shape[0] != model.in_channels or test_set.num_classes != model.num_classes:
        raise DataError(f"{args.model} takes {model.in_channels}-channel images of {model.num_classes} classes, "
                        f"but {args.data} has {shape[0]}-channel images of {test_set.num_classes} classes")
    if keys is not None:
        experiment.check_block_size(test_set, keys.block_size)

    results = experiment.evaluate_model(protected, keys, test_set.to(device), wrong_keys=args.wrong_keys,
                                    device=device, batch_size=args.batch_size)
    results["model"], results["data"], results["device"] = str(args.model), args.data, device_name(device)
    report = format_markdown(results)
    print(report)

    out = Path(args.out) if args.out is not None else Path(args.model).parent / "eval"
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", results)
    write_text(out / "results.md", report)
    print(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    return 0
