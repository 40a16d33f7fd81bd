"""kpfast i2p: image to perturbation (Ito et al., IEEE Access 2021), a key-free transformation
network whose protected images stay classifiable by the plain-trained classifier, with its attacks.

  kpfast i2p run     the whole experiment (classifiers, h_θ, λ sweep, PNG export, attacks, report);
                     resumable: run the same command again to continue or to rebuild the report
  kpfast i2p export  protect a data set with a trained h_θ and write it as 8-bit PNG files

Examples:

  kpfast i2p run --data cifar10 --device cuda --out runs/i2p            # the full run on a GPU
  kpfast i2p run --data path/to/cifar10.zip --out runs/i2p              # an image folder or zip
  kpfast i2p run --data synthetic --train-subset 1000 --test-subset 300 --classifiers small_cnn \\
      --lambdas 0.01 --feature-model small_cnn --epochs-classifier 3 --epochs-features 1 \\
      --epochs-transform 12 --epochs-attack 2 --epochs-gan 1 --width 0.125 --gan-width 0.125 \\
      --batch-size 16 --device cpu --out runs/i2p-tiny   # on a CPU, minutes
  kpfast i2p export --transform runs/i2p/transforms/resnet20-lam0.01.pt --data cifar10 --out protected/

The defaults are sized for one GPU (about 25 minutes for CIFAR-10 on a recent data-centre GPU).
For a job with a wall-clock limit (a batch queue, a shared machine), pass --time-limit SECONDS:
the run stops cleanly between epochs with exit status 3, and the same command continues where it
stopped; repeat it until it exits with 0. --no-progress leaves the logs only (for log files).
Every output, including the resumable state, is under --out. Needs the kpfast[i2p] extra.

On several GPUs: torchrun --nproc-per-node 8 -m kpfast i2p run --data cifar10 --device cuda ...
(--batch-size is the global batch; rank 0 logs and writes; on several machines --out must be on
a shared file system).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import fields

import torch

from ..errors import DataError, TimeLimitReached
from .options import add_device, floats as _floats, names as _names, positive_int

TIME_LIMIT_EXIT = TimeLimitReached.exit_code  # the run stopped at --time-limit with its progress saved


def add_arguments(p: argparse.ArgumentParser, name: str) -> None:
    from ..i2p.experiment import Config

    d = Config()
    steps = p.add_subparsers(dest="step", required=True, metavar="step", help="run: the experiment; export: protected PNGs")

    r = steps.add_parser("run", help="the whole experiment, resumable stage by stage",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    r.add_argument("--data", default=d.data, help="cifar10, synthetic, ... or an image folder / zip")
    r.add_argument("--data-root", default=d.data_root, help="folder of the data set's files (cifar10, fashion-mnist)")
    r.add_argument("--out", default=d.out, help="output folder (also holds the resumable state)")
    r.add_argument("--classifiers", type=_names, default=",".join(d.classifiers), help="ψ models, comma-separated")
    r.add_argument("--lam", type=float, default=d.lam, help="λ of every classifier's h_θ")
    r.add_argument("--lambdas", type=_floats, default=",".join(f"{v:g}" for v in d.lambdas),
                   help="λ sweep for the first classifier")
    for stage, what in (("classifier", "ψ"), ("features", "the fallback F's classifier"), ("transform", "h_θ"),
                        ("attack", "the ITN attacker"), ("gan", "the GAN attacker")):
        r.add_argument(f"--epochs-{stage}", type=positive_int, default=getattr(d, f"epochs_{stage}"),
                       help=f"epochs of {what} (paper: 200)" if stage != "features" else f"epochs of {what}")
    r.add_argument("--width", type=float, default=d.width, help="U-Net width of h_θ and the ITN (1 = 34.5 M params)")
    r.add_argument("--gan-width", type=float, default=d.gan_width, help="U-Net width of the GAN generator")
    r.add_argument("--feature-model", default=d.feature_model, help="classifier of the fallback F")
    r.add_argument("--vgg-weights", default=d.vgg_weights,
                   help="torchvision vgg16 state dict; None: $TORCH_HOME/hub/checkpoints/vgg16-397923af.pth "
                        "if present, else the fallback F")
    r.add_argument("--batch-size", type=positive_int, default=d.batch_size, help="of ψ, h_θ and the ITN (the GAN uses 64); the SGD learning rate "
                        "scales with it, 0.1 at 128")
    r.add_argument("--train-subset", type=positive_int, default=d.train_subset,
                   help="the first N images, balanced over classes (None: all)")
    r.add_argument("--test-subset", type=positive_int, default=d.test_subset,
                   help="the first N images, balanced over classes (None: all)")
    r.add_argument("--seed", type=int, default=d.seed, help="of ψ, h_θ and the attacks (the fallback F: seed + 1)")
    add_device(r)
    r.add_argument("--time-limit", type=float, default=None,
                   help=f"seconds; stop cleanly between epochs (exit {TIME_LIMIT_EXIT}) and continue on the next call")
    r.add_argument("--no-progress", action="store_true", help="no progress bars, also for downloads and decoding "
                   "(logs stay)")
    r.set_defaults(run=run)

    e = steps.add_parser("export", help="protect a data set with a trained h_θ, as 8-bit PNGs")
    e.add_argument("--transform", required=True, help="an h_θ file from `run` (out/transforms/*.pt)")
    e.add_argument("--data", default="cifar10", help="the data set to protect: cifar10, synthetic, ... or an image "
                   "folder / zip (default: cifar10)")
    e.add_argument("--data-root", default=None, help="folder of the data set's files (cifar10, fashion-mnist)")
    e.add_argument("--splits", type=_names, default=("train", "test"),
                   help="comma list of the splits to write: train, test (default: both)")
    e.add_argument("--out", required=True, help="folder for <split>/<class>/<index>.png")
    add_device(e)
    e.set_defaults(run=export)


def run(args: argparse.Namespace) -> int:
    from ..engine.distributed import process_group, rank_device
    from ..i2p.experiment import Config, run as run_experiment

    options = {f.name: getattr(args, f.name) for f in fields(Config) if hasattr(args, f.name)}
    options["progress"] = not args.no_progress
    with process_group(options["device"]):  # a single process outside torchrun
        options["device"] = str(rank_device(options["device"]))  # cuda:LOCAL_RANK under torchrun
        if torch.device(options["device"]).type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed 32x32 shapes: let cuDNN pick the fastest kernels
        run_experiment(Config(**options))  # TimeLimitReached: exit status 3, handled with every error
    return 0


def export(args: argparse.Namespace) -> int:
    from ..data import ImageSet, load_dataset
    from ..engine import checkpoint
    from ..engine.device import resolve_device
    from ..i2p.export import export_png
    from ..i2p.loss import protect_all, quantize
    from ..i2p.unet import UNet

    device = resolve_device(args.device)
    saved = checkpoint.read(args.transform, what="h_θ file")
    if not isinstance(saved, dict) or "state_dict" not in saved or "config" not in saved:
        raise DataError(f"{args.transform} is not an h_θ file written by `kpfast i2p run`")
    h = UNet(**saved["config"])
    h.load_state_dict(saved["state_dict"])
    h.to(device).eval()
    sets = dict(zip(("train", "test"), load_dataset(args.data, args.data_root)))
    for split in args.splits:
        if split not in sets:
            raise DataError(f"unknown split {split!r}; expected train and/or test")
        images = sets[split]
        protected = quantize(protect_all(h, images.images, device))
        folder = export_png(ImageSet(protected, images.labels, images.classes), args.out, split)
        print(f"wrote {len(images)} protected images to {folder}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`kpfast i2p ...` on its own (`python -m kpfast.cli.i2p ...`)."""
    from . import main as kpfast_main

    return kpfast_main(["i2p", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
