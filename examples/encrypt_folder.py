"""Encrypt a folder of images for a cloud trainer that never sees the key.

At home, with the key:
1. a plain image folder laid out as train/<class>/* and test/<class>/* (here written from the
   synthetic set generated in code; --images FOLDER for your own);
2. a fresh key set, which stays at home;
3. `kpfast encrypt`: every image as a protected PNG, and a manifest with the chain, the key's
   fingerprint and the plain training images' statistics (never the key).

In the cloud, without the key:
4. `kpfast train --data ENCRYPTED --ops plain`: a model trained on the protected images as they
   are (a second key on top is refused).

At home again:
5. the returned model.pt behind the owner's transform: plain images protected with the key give
   the predictions the trainer gets on the encrypted test set, bit for bit; plain images without
   the key leave the model guessing.

    python examples/encrypt_folder.py [--images FOLDER] [--train-size 2000] [--test-size 500] [--epochs 4]

Everything is written to a temporary folder that is removed at the end (--keep FOLDER keeps it).
"""
import argparse
import json
import os
import tempfile
from pathlib import Path

import torch
from PIL import Image

import kpfast
from kpfast.cli import main as kpfast_command  # the `kpfast` command line, called in-process
from kpfast.data import load_dataset, make_synthetic
from kpfast.protection import ProtectedModel

OPS = ("shuffle", "negpos", "ffx")


def write_image_folder(root: Path, train_size: int, test_size: int) -> Path:
    """The synthetic set as PNG files: root/train/<class>/<i>.png and root/test/<class>/<i>.png."""
    for split, images in zip(("train", "test"), make_synthetic(train_size, test_size)):
        for i, (pixels, label) in enumerate(zip(images.images, images.labels)):
            folder = root / split / images.classes[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(folder / f"{i:05d}.png")
    return root


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(1) == labels).float().mean().item()


def run(args: argparse.Namespace, work: Path) -> None:
    os.environ.setdefault("KPFAST_CACHE", str(work / "cache"))  # decoded images: inside the work folder
    # 1-2. The owner's plain images and key.
    plain = Path(args.images) if args.images else write_image_folder(work / "plain", args.train_size, args.test_size)
    keys = kpfast.KeySet.generate(block_size=4, channels=3)
    key_file = work / "owner.key"
    keys.save(key_file)  # mode 0600; only the owner has it

    # 3. Encrypt: protected PNGs and a manifest. This folder is what goes to the cloud.
    encrypted = work / "encrypted"
    assert kpfast_command(["encrypt", str(plain), str(encrypted), "--key", str(key_file), "--ops", ",".join(OPS)]) == 0
    manifest = json.loads((encrypted / "kpfast-manifest.json").read_text())
    print(f"manifest: ops {manifest['ops']}, M={manifest['block_size']}, key fingerprint "
          f"{manifest['key_fingerprint']}, {len(manifest['files'])} files; holds the key: "
          f"{any(k in manifest for k in ('perm', 'np_mask', 'ffx_mask', 'password'))}")

    # 4. The cloud trainer: the encrypted folder alone, trained on as it is.
    run_folder = work / "cloud-run"
    assert kpfast_command(["train", "--data", str(encrypted), "--ops", "plain", "--model", "small_cnn",
                           "--epochs", str(args.epochs), "--batch-size", "128", "--device", args.device,
                           "--out", str(run_folder)]) == 0
    trained = ProtectedModel.load(run_folder / "model.pt", map_location=args.device).eval()  # Normalize + CNN

    # 5. The owner protects plain images with the key, exactly as `kpfast encrypt` did, and feeds the
    #    model the trainer sent back.
    protect = kpfast.BlockTransform(keys, OPS, rounding="nearest").to(args.device)
    _, plain_test = load_dataset(str(plain), progress=False)
    _, encrypted_test = load_dataset(str(encrypted), progress=False)
    labels = plain_test.labels.to(args.device)
    with torch.inference_mode():
        owner = trained(protect(plain_test.images.to(args.device)))
        cloud = trained(encrypted_test.images.to(args.device))
        no_key = trained(plain_test.images.to(args.device))
    print(f"the owner, plain test images with the key: accuracy {accuracy(owner, labels):.1%}")
    print(f"same predictions as the trainer's on the encrypted test set: "
          f"{torch.equal(owner.argmax(1), cloud.argmax(1))}")
    print(f"plain test images without the key: accuracy {accuracy(no_key, labels):.1%} "
          f"(chance {1 / plain_test.num_classes:.0%})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", help="your own folder of train/<class>/* and test/<class>/* images "
                        "(default: the synthetic set, written as PNG files)")
    parser.add_argument("--train-size", type=int, default=2000, help="synthetic training images (default: 2000)")
    parser.add_argument("--test-size", type=int, default=500, help="synthetic test images (default: 500)")
    parser.add_argument("--epochs", type=int, default=4, help="the cloud trainer's epochs (default: 4)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--keep", help="write everything to this new folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    if args.keep:
        Path(args.keep).mkdir(parents=True)
        run(args, Path(args.keep))
    else:
        with tempfile.TemporaryDirectory() as work:
            run(args, Path(work))


if __name__ == "__main__":
    main()
