"""kpfast train: train a model behind a secret-key block transform (or a plain model).

The run folder (--out) gets the training checkpoint (last.pt, rewritten every epoch; continue an
interrupted run with --resume), the final model.pt (weights, transform config and the key's
fingerprint, never the key) and train.json (settings, the data set's statistics, per-epoch
history, test accuracy).

With --key FILE: an existing key is used; otherwise a fresh one is generated and saved there
(mode 0600). Keep it: the model is useless without it.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

from ..atomic import write_json
from ..data.stats import dataset_stats
from ..engine.classifier import DEFAULTS, default_batch_size, default_lr, default_model
from ..engine.device import default_device, device_name, resolve_device
from ..errors import ConfigError, Interrupted, KeyFileError, OutputExistsError
from ..keys import KeySet
from ..models import list_models
from ..protection import experiment
from .options import positive_int


def add_run_arguments(p: argparse.ArgumentParser, *, epochs: int = DEFAULTS.epochs, model: str | None = None) -> None:
    """Data, model and training options shared by `kpfast train` and `kpfast reproduce`."""
    p.add_argument("--data-root", help="folder of the data set's files (cifar10, fashion-mnist)")
    p.add_argument("--model", default=model, help=f"model: {', '.join(list_models())} (default: "
                   f"{model or 'resnet18 on CUDA, small_cnn on CPU'})")
    p.add_argument("--epochs", type=positive_int, default=epochs, help=f"default: {epochs}")
    p.add_argument("--batch-size", type=positive_int,
                   help=f"default: {default_batch_size('cuda')} on CUDA, {default_batch_size('cpu')} on CPU")
    p.add_argument("--lr", type=float, help="peak learning rate of the one-cycle schedule (default: "
                   f"{default_lr('resnet18')} for resnet18, {default_lr('resnet20')} for resnet20, else {DEFAULTS.lr})")
    p.add_argument("--label-smoothing", type=float, default=DEFAULTS.label_smoothing,
                   help=f"default: {DEFAULTS.label_smoothing}")
    p.add_argument("--train-subset", type=positive_int, metavar="N",
                   help="train on the first N images (balanced classes)")
    p.add_argument("--test-subset", type=positive_int, metavar="N",
                   help="test on the first N images (balanced classes)")
    p.add_argument("--device", default=default_device(), help="default: cuda if available, else cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--seed", type=int, default=0, help="initial weights and data order (default: 0)")


def run_config(args: argparse.Namespace, **fields: Any) -> experiment.RunConfig:
    """The RunConfig of the shared options (device-dependent defaults filled in) and `fields`."""
    device = str(resolve_device(args.device))
    model = args.model or default_model(device)
    return experiment.RunConfig(
        data_root=args.data_root, model=model, epochs=args.epochs,
        batch_size=args.batch_size if args.batch_size is not None else default_batch_size(device),
        lr=args.lr if args.lr is not None else default_lr(model), label_smoothing=args.label_smoothing,
        seed=args.seed, device=device, compile=args.compile, train_subset=args.train_subset,
        test_subset=args.test_subset, **fields)


def add_arguments(p: argparse.ArgumentParser, name: str) -> None:
    p.add_argument("--data", default="synthetic",
                   help="synthetic | cifar10 | fashion-mnist | path of an image folder or zip (default: synthetic)")
    p.add_argument("--ops", default="shuffle,negpos,ffx",
                   help="comma list of shuffle, negpos, ffx in the order applied, or 'plain' (default: all three)")
    p.add_argument("--block-size", "-M", type=positive_int, help="block size M (default: the key's, else 4)")
    p.add_argument("--key", help="key file: used if it exists, else a fresh key is saved there (mode 0600)")
    p.add_argument("--out", required=True, help="run folder (checkpoint, model.pt, train.json)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    add_run_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    ops = experiment.parse_ops(args.ops)
    out = Path(args.out)
    checkpoint = out / "last.pt"
    if not args.resume and (checkpoint.exists() or (out / "model.pt").exists()):
        raise OutputExistsError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
    if ops and args.key is None:
        raise ConfigError(f"--ops {','.join(ops)} needs --key FILE (an existing key, or where to save a fresh one)")
    if not ops and args.key is not None:
        raise ConfigError("--ops plain trains a model without a key: drop --key")
    if args.resume and checkpoint.exists() and ops and not Path(args.key).exists():
        raise KeyFileError(f"cannot resume {checkpoint} without the key it was trained with: {args.key} does not exist")

    config = run_config(args, data=args.data, ops=ops,
                        block_size=args.block_size if args.block_size is not None else 4)
    train_set, test_set = experiment.load_data(config)
    channels = train_set.images.shape[1]

    keys = None
    if ops:
        if args.block_size is None and Path(args.key).exists():  # the key decides the block size
            config = dataclasses.replace(config, block_size=KeySet.load(args.key).block_size)
        experiment.check_block_size(train_set, config.block_size)
        keys, created = experiment.load_or_create_key(args.key, config.block_size, channels)
        print(f"{'generated a fresh key' if created else 'key'} {keys.fingerprint()} "
              f"{'and saved it to' if created else 'from'} {args.key}"
              f"{' (mode 0600; keep it secret, the model is useless without it)' if created else ''}")
    print(f"data: {config.data}, {len(train_set)} train / {len(test_set)} test images of "
          f"{tuple(train_set.images.shape[1:])}; model {config.model} on {device_name(config.device)}; "
          f"ops: {','.join(ops) or 'plain'}{f', M={config.block_size}' if ops else ''}")

    out.mkdir(parents=True, exist_ok=True)
    try:
        protected, history = experiment.train_run(config, train_set, keys, checkpoint_dir=out, resume=args.resume)
    except KeyboardInterrupt as e:  # Ctrl-C: say how to continue instead of a traceback
        raise Interrupted(f"{e or 'interrupted'}; to continue, run the same command with --resume") from None
    protected.save(out / "model.pt")
    accuracy = experiment.own_key_accuracy(protected, test_set.to(config.device), config.device)

    summary = {
        "config": config.as_dict(),
        "key_fingerprint": protected.key_fingerprint,
        "normalization": dataset_stats(config.data, train_set).as_dict(),
        "device": device_name(config.device),
        "train_images": len(train_set),
        "test_images": len(test_set),
        "test_accuracy": accuracy,
        "seconds_per_epoch": experiment.seconds_per_epoch(history.seconds),
        "history": {"loss": history.loss, "train_accuracy": history.accuracy, "seconds": history.seconds},
        "wall_seconds": time.perf_counter() - started,
    }
    write_json(out / "train.json", summary)
    what = "with the correct key" if ops else "(plain model)"
    print(f"test accuracy {what}: {accuracy:.2%}; wrote {out / 'model.pt'} and {out / 'train.json'} "
          f"in {summary['wall_seconds']:.0f} s")
    return 0
