"""kpfast train: train a model behind a secret-key block transform (or a plain model).

The run folder (--out) gets the training checkpoint (last.pt, rewritten every epoch; continue an
interrupted run with --resume), the final model.pt (weights, transform config and the key's
fingerprint, never the key) and train.json (settings, per-epoch history, test accuracy).

With --key FILE: an existing key is used; otherwise a fresh one is generated and saved there
(mode 0600). Keep it: the model is useless without it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from .. import experiment as ex
from ..atomic import atomic_write
from ..keys import KeySet
from ..models import list_models


def add_run_arguments(p: argparse.ArgumentParser, *, epochs: int = 10, model: str | None = None) -> None:
    """Data, model and training options shared by `kpfast train` and `kpfast reproduce`."""
    p.add_argument("--data-root", help="folder of the data set's files (cifar10, fashion-mnist)")
    p.add_argument("--model", default=model, help=f"model: {', '.join(list_models())} (default: "
                   f"{model or 'resnet18 on CUDA, small_cnn on CPU'})")
    p.add_argument("--epochs", type=int, default=epochs, help=f"default: {epochs}")
    p.add_argument("--batch-size", type=int, help="default: 512 on CUDA, 128 on CPU")
    p.add_argument("--lr", type=float, help="peak learning rate of the one-cycle schedule "
                   "(default: 0.2 for resnet18, 0.1 for resnet20, else 0.05)")
    p.add_argument("--label-smoothing", type=float, default=0.1, help="default: 0.1")
    p.add_argument("--train-subset", type=int, metavar="N", help="train on the first N images (balanced classes)")
    p.add_argument("--test-subset", type=int, metavar="N", help="test on the first N images (balanced classes)")
    p.add_argument("--device", default=ex.default_device(), help="default: cuda if available, else cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--seed", type=int, default=0, help="initial weights and data order (default: 0)")


def run_config(args: argparse.Namespace, **fields: Any) -> ex.RunConfig:
    """The RunConfig of the shared options (device-dependent defaults filled in) and `fields`."""
    model = args.model or ex.default_model(args.device)
    return ex.RunConfig(
        data_root=args.data_root, model=model, epochs=args.epochs,
        batch_size=args.batch_size if args.batch_size is not None else ex.default_batch_size(args.device),
        lr=args.lr if args.lr is not None else ex.default_lr(model), label_smoothing=args.label_smoothing,
        seed=args.seed, device=args.device, compile=args.compile, train_subset=args.train_subset,
        test_subset=args.test_subset, **fields)


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="train a protected (or plain) model", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="synthetic",
                   help="synthetic | cifar10 | fashion-mnist | path of an image folder or zip (default: synthetic)")
    p.add_argument("--ops", default="shuffle,negpos,ffx",
                   help="comma list of shuffle, negpos, ffx in the order applied, or 'plain' (default: all three)")
    p.add_argument("--block-size", "-M", type=int, help="block size M (default: the key's, else 4)")
    p.add_argument("--key", help="key file: used if it exists, else a fresh key is saved there (mode 0600)")
    p.add_argument("--out", required=True, help="run folder (checkpoint, model.pt, train.json)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    add_run_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    ops = ex.parse_ops(args.ops)
    out = Path(args.out)
    checkpoint = out / "last.pt"
    if not args.resume and (checkpoint.exists() or (out / "model.pt").exists()):
        raise ValueError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
    if ops and args.key is None:
        raise ValueError(f"--ops {','.join(ops)} needs --key FILE (an existing key, or where to save a fresh one)")
    if not ops and args.key is not None:
        raise ValueError("--ops plain trains a model without a key: drop --key")
    if args.resume and checkpoint.exists() and ops and not Path(args.key).exists():
        raise ValueError(f"cannot resume {checkpoint} without the key it was trained with: {args.key} does not exist")

    config = run_config(args, data=args.data, ops=ops,
                        block_size=args.block_size if args.block_size is not None else 4)
    train_set, test_set = ex.load_data(config)
    channels = train_set.images.shape[1]

    keys = None
    if ops:
        if args.block_size is None and Path(args.key).exists():  # the key decides the block size
            config = dataclasses.replace(config, block_size=KeySet.load(args.key).block_size)
        ex.check_block_size(train_set, config.block_size)
        keys, created = ex.load_or_create_key(args.key, config.block_size, channels)
        print(f"{'generated a fresh key' if created else 'key'} {keys.fingerprint()} "
              f"{'and saved it to' if created else 'from'} {args.key}"
              f"{' (mode 0600; keep it secret, the model is useless without it)' if created else ''}")
    print(f"data: {config.data}, {len(train_set)} train / {len(test_set)} test images of "
          f"{tuple(train_set.images.shape[1:])}; model {config.model} on {ex.device_name(config.device)}; "
          f"ops: {','.join(ops) or 'plain'}{f', M={config.block_size}' if ops else ''}")

    out.mkdir(parents=True, exist_ok=True)
    protected, history = ex.train_run(config, train_set, keys, checkpoint_dir=out, resume=args.resume)
    protected.save(out / "model.pt")
    accuracy = ex.own_key_accuracy(protected, ex.to_device(test_set, config.device), config.device)

    summary = {
        "config": config.as_dict(),
        "key_fingerprint": protected.key_fingerprint,
        "device": ex.device_name(config.device),
        "train_images": len(train_set),
        "test_images": len(test_set),
        "test_accuracy": accuracy,
        "seconds_per_epoch": ex.seconds_per_epoch(history.seconds),
        "history": {"loss": history.loss, "train_accuracy": history.accuracy, "seconds": history.seconds},
        "wall_seconds": time.perf_counter() - started,
    }
    data = (json.dumps(summary, indent=2) + "\n").encode()
    atomic_write(out / "train.json", lambda f: f.write(data))
    what = "with the correct key" if ops else "(plain model)"
    print(f"test accuracy {what}: {accuracy:.2%}; wrote {out / 'model.pt'} and {out / 'train.json'} "
          f"in {summary['wall_seconds']:.0f} s")
    return 0
