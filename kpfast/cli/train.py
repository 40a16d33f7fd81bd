"""kpfast train: train a model behind a secret-key block transform (or a plain model).

The run folder (--out) gets the training checkpoint (last.pt, rewritten every epoch; continue an
interrupted run with --resume), the final model.pt (weights, transform config and the key's
fingerprint, never the key) and train.json (settings, the data set's statistics, per-epoch
history, test accuracy).

With --key FILE: an existing key is used; otherwise a fresh one is generated and saved there
(mode 0600). Keep it: the model is useless without it.

More than one GPU (or CPU process): start it with torchrun, e.g.
  torchrun --nproc-per-node 8 -m kpfast train --data cifar10 --key my.key --out runs/ffx4
--batch-size is the global batch of all ranks together (the same command on 1 or 8 GPUs is the
same run); rank 0 prints and writes --out; every machine needs its own copy of the key file.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

from ..atomic import write_json
from ..engine.classifier import DEFAULTS, default_batch_size, default_lr, default_model
from ..engine.device import device_name
from ..engine.distributed import process_group, rank_device
from ..engine.ranks import Ranks
from ..errors import ConfigError, Interrupted, KeyFileError, OutputExistsError
from ..keys import KeySet
from ..models import list_models
from ..protection import experiment
from .options import add_device, positive_int


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
    add_device(p)
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--seed", type=int, default=0, help="initial weights and data order (default: 0)")
    p.add_argument("--sync-bn", action="store_true",
                   help="under torchrun on GPUs: BatchNorm statistics of the global batch (default: each rank's own)")


def run_config(args: argparse.Namespace, **fields: Any) -> experiment.RunConfig:
    """The RunConfig of the shared options (device-dependent defaults filled in) and `fields`; the
    device is this rank's (cuda:LOCAL_RANK under torchrun)."""
    device = str(rank_device(args.device))
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
    p.add_argument("--image-size", type=positive_int, metavar="S",
                   help="stream the image folder --data (train/ and val/ or test/, <class>/<image>, images of any "
                        "size, e.g. ImageNet): random resized crops of S x S for training, resize + center crop "
                        "for testing, decoded in DataLoader workers; ImageNet's normalisation")
    p.add_argument("--workers", type=positive_int, default=experiment.WORKERS,
                   help=f"DataLoader workers of --image-size (default: {experiment.WORKERS})")
    add_run_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    with process_group(args.device) as ranks:  # a single process outside torchrun
        return train_command(args, ranks)


def train_command(args: argparse.Namespace, ranks: Ranks) -> int:
    started = time.perf_counter()
    say = print if ranks.is_main else (lambda *a, **k: None)  # rank 0 speaks for the job
    ops = experiment.parse_ops(args.ops)
    experiment.check_ops_fit_data(ops, args.data, args.data_root)
    out = Path(args.out)
    checkpoint = out / "last.pt"
    if ops and args.key is None:
        raise ConfigError(f"--ops {','.join(ops)} needs --key FILE (an existing key, or where to save a fresh one)")
    if not ops and args.key is not None:
        raise ConfigError("--ops plain trains a model without a key: drop --key")

    def check_out() -> None:  # rank 0's file system decides (the others may not see --out)
        if not args.resume and (checkpoint.exists() or (out / "model.pt").exists()):
            raise OutputExistsError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
        if args.resume and checkpoint.exists() and ops and not Path(args.key).exists():
            raise KeyFileError(f"cannot resume {checkpoint} without the key it was trained with: {args.key} does not exist")

    ranks.from_main(check_out)
    config = run_config(args, data=args.data, ops=ops, image_size=args.image_size,
                        block_size=args.block_size if args.block_size is not None else 4)
    # Rank 0 downloads or decodes first; the others then read its cache.
    train_set, test_set = ranks.main_first(lambda: experiment.load_data(config, progress=ranks.is_main))
    shape = experiment.image_shape(train_set)
    channels = shape[0]

    keys = None
    if ops:
        if args.block_size is None and Path(args.key).exists():  # the key decides the block size
            config = dataclasses.replace(config, block_size=KeySet.load(args.key).block_size)
        experiment.check_block_size(train_set, config.block_size)
        keys, created = experiment.load_or_create_key(args.key, config.block_size, channels)
        say(f"{'generated a fresh key' if created else 'key'} {keys.fingerprint()} "
              f"{'and saved it to' if created else 'from'} {args.key}"
              f"{' (mode 0600; keep it secret, the model is useless without it)' if created else ''}")
    say(f"data: {config.data}, {len(train_set)} train / {len(test_set)} test images of "
          f"{shape}{' (streamed)' if config.image_size else ''}; model {config.model} on {device_name(config.device)}; "
          f"ops: {','.join(ops) or 'plain'}{f', M={config.block_size}' if ops else ''}")

    if ranks.distributed:
        say(f"distributed: {ranks.world_size} ranks, global batch {config.batch_size} "
              f"({config.batch_size // ranks.world_size} per rank), peak LR {config.lr} for the global batch")
    ranks.from_main(lambda: out.mkdir(parents=True, exist_ok=True))
    try:
        protected, history = experiment.train_run(config, train_set, keys, checkpoint_dir=out, resume=args.resume,
                                                  sync_batchnorm=args.sync_bn, workers=args.workers)
    except KeyboardInterrupt as e:  # Ctrl-C: say how to continue instead of a traceback
        raise Interrupted(f"{e or 'interrupted'}; to continue, run the same command with --resume") from None
    if not ranks.is_main:  # rank 0 evaluates and writes the results
        return 0
    protected.save(out / "model.pt")
    accuracy = experiment.own_key_accuracy(protected, test_set, config.device, workers=args.workers)

    summary = {
        "config": config.as_dict(),
        "key_fingerprint": protected.key_fingerprint,
        "normalization": experiment.data_stats(config, train_set).as_dict(),
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
