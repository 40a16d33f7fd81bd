"""kpfast i2p: image to perturbation (Ito et al., IEEE Access 2021), a key-free transformation
network whose protected images stay classifiable by the plain-trained classifier, with its attacks.

  kpfast i2p run     the whole experiment (classifiers, h_θ, λ sweep, PNG export, attacks, report);
                     resumable: run the same command again to continue or to rebuild the report
  kpfast i2p export  protect a data set with a trained h_θ and write it as 8-bit PNG files

Also runnable as `python -m kpfast.cli.i2p ...`, which imports no other subcommand.

The full CIFAR-10 run on one GPU machine (no internet, torch with CUDA, no torchvision needed):
copy ../shared/data/cifar10-jpeg.zip to .data/ (ignored), carry .data, and from the repository
root run, as often as it exits with 3 (each call stops cleanly after about 9 minutes and the next
one continues; call again while the machine is still warm, since the state lives in runs/i2p):

  mkdir -p runs/i2p $OUT/i2p; export PYTHONUNBUFFERED=1; python3 -c 'import kpfast' 2>/dev/null ||
  KPFAST_CUDA=OFF python3 -m pip install -q --no-build-isolation --no-deps -e . || exit 1;
  timeout 585 python3 -m kpfast.cli.i2p run --data .data/cifar10-jpeg.zip --device cuda --out runs/i2p
  --time-limit 540 --no-progress 2>&1 | tee -a runs/i2p/log.txt; rc=${PIPESTATUS[0]};
  cp runs/i2p/results.* runs/i2p/*.png runs/i2p/log.txt $OUT/i2p/; exit $rc

(KPFAST_CUDA=OFF: i2p needs none of kpfast's CUDA kernels, so the build is quick; `-m
kpfast.cli.i2p` avoids importing the other subcommands and their optional dependencies.)
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import fields

import torch

TIME_LIMIT_EXIT = 3  # the run stopped at --time-limit with its progress saved


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def add_parser(sub, name: str) -> None:
    from ..i2p.experiment import Config

    d = Config()
    p = sub.add_parser(name, help="image to perturbation: key-free protected images and their attacks",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    steps = p.add_subparsers(dest="step", required=True, metavar="step")

    r = steps.add_parser("run", help="the whole experiment, resumable stage by stage",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    r.add_argument("--data", default=d.data, help="cifar10, synthetic, ... or an image folder / zip")
    r.add_argument("--data-root", default=d.data_root)
    r.add_argument("--out", default=d.out, help="output folder (also holds the resumable state)")
    r.add_argument("--classifiers", type=_names, default=",".join(d.classifiers), help="ψ models, comma-separated")
    r.add_argument("--lam", type=float, default=d.lam, help="λ of every classifier's h_θ")
    r.add_argument("--lambdas", type=_floats, default=",".join(f"{v:g}" for v in d.lambdas),
                   help="λ sweep for the first classifier")
    for stage, what in (("classifier", "ψ"), ("features", "the fallback F's classifier"), ("transform", "h_θ"),
                        ("attack", "the ITN attacker"), ("gan", "the GAN attacker")):
        r.add_argument(f"--epochs-{stage}", type=int, default=getattr(d, f"epochs_{stage}"),
                       help=f"epochs of {what} (paper: 200)" if stage != "features" else f"epochs of {what}")
    r.add_argument("--width", type=float, default=d.width, help="U-Net width of h_θ and the ITN (1 = 34.5 M params)")
    r.add_argument("--gan-width", type=float, default=d.gan_width, help="U-Net width of the GAN generator")
    r.add_argument("--feature-model", default=d.feature_model, help="classifier of the fallback F")
    r.add_argument("--vgg-weights", default=d.vgg_weights,
                   help="torchvision vgg16 state dict; None: $TORCH_HOME/hub/checkpoints/vgg16-397923af.pth "
                        "if present, else the fallback F")
    r.add_argument("--batch-size", type=int, default=d.batch_size, help="of ψ, h_θ and the ITN (the GAN uses 64)")
    r.add_argument("--train-subset", type=int, default=d.train_subset, help="images, stratified (None: all)")
    r.add_argument("--test-subset", type=int, default=d.test_subset, help="images, stratified (None: all)")
    r.add_argument("--seed", type=int, default=d.seed, help="of ψ, h_θ and the attacks (the fallback F: seed + 1)")
    r.add_argument("--device", default=d.device, help="cpu, cuda, cuda:1, ...")
    r.add_argument("--time-limit", type=float, default=None,
                   help=f"seconds; stop cleanly between epochs (exit {TIME_LIMIT_EXIT}) and continue on the next call")
    r.add_argument("--no-progress", action="store_true", help="no progress bars (logs stay)")
    r.set_defaults(run=run)

    e = steps.add_parser("export", help="protect a data set with a trained h_θ, as 8-bit PNGs")
    e.add_argument("--transform", required=True, help="an h_θ file from `run` (out/transforms/*.pt)")
    e.add_argument("--data", default="cifar10")
    e.add_argument("--data-root", default=None)
    e.add_argument("--splits", type=_names, default=("train", "test"))
    e.add_argument("--out", required=True, help="folder for <split>/<class>/<index>.png")
    e.add_argument("--device", default=d.device)
    e.set_defaults(run=export)


def run(args: argparse.Namespace) -> int:
    from ..i2p.experiment import Config, run as run_experiment
    from ..i2p.train import TimeLimitReached

    options = {f.name: getattr(args, f.name) for f in fields(Config) if hasattr(args, f.name)}
    options["progress"] = not args.no_progress
    if options["device"].startswith("cuda"):
        torch.backends.cudnn.benchmark = True  # fixed 32x32 shapes: let cuDNN pick the fastest kernels
    try:
        run_experiment(Config(**options))
    except TimeLimitReached as e:
        print(f"kpfast i2p: {e}", file=sys.stderr)
        return TIME_LIMIT_EXIT
    return 0


def export(args: argparse.Namespace) -> int:
    from ..data import ImageSet, load_dataset
    from ..i2p.export import export_png
    from ..i2p.loss import protect, quantize
    from ..i2p.unet import UNet

    saved = torch.load(args.transform, map_location="cpu", weights_only=True)
    if not isinstance(saved, dict) or "state_dict" not in saved or "config" not in saved:
        raise ValueError(f"{args.transform} is not an h_θ file written by `kpfast i2p run`")
    h = UNet(**saved["config"])
    h.load_state_dict(saved["state_dict"])
    h.to(args.device).eval()
    sets = dict(zip(("train", "test"), load_dataset(args.data, args.data_root)))
    for split in args.splits:
        if split not in sets:
            raise ValueError(f"unknown split {split!r}; expected train and/or test")
        images = sets[split]
        with torch.no_grad():
            protected = torch.cat([quantize(protect(h, x.to(args.device))).cpu() for x in images.images.split(500)])
        folder = export_png(ImageSet(protected, images.labels, images.classes), args.out, split)
        print(f"wrote {len(images)} protected images to {folder}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kpfast")
    add_parser(parser.add_subparsers(dest="command", required=True), "i2p")
    args = parser.parse_args(["i2p", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.run(args) or 0
    except (ValueError, OSError, RuntimeError) as e:
        print(f"kpfast i2p: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
