"""Train and evaluate a protected model: it works with its secret key and fails without it.

1. a data set (here the synthetic one generated in code; kpfast.data.load_dataset("cifar10") or
   the path of an image folder for real data) and a fresh key set;
2. a classifier trained on key-transformed images (kpfast.engine.train: the fused transform runs
   on every batch, on the device where the data lives);
3. the evaluation of the threat model: the correct key, fresh wrong keys, and plain images;
4. the deployable ProtectedModel: saved without its key (a fingerprint only), loaded back with
   it, and refused with another key.

    python examples/train_protected_model.py [--train-size 5000] [--test-size 1000] [--epochs 6]

The table shows the accuracy with the correct key, with each wrong key and on plain images
(chance is 10 % on the synthetic set); a model that has learned anything shows the gap.
"""
import argparse
import tempfile
from pathlib import Path

import torch

import kpfast
from kpfast.data import DeviceLoader, channel_stats, make_synthetic
from kpfast.engine import train
from kpfast.errors import KeyMismatchError
from kpfast.models import create_model
from kpfast.protection import ProtectedModel, evaluate_protection, format_markdown

OPS = ("shuffle", "negpos", "ffx")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=5000)
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--wrong-keys", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    # 1. Data and a key. The statistics are the plain training images'; Normalize is folded
    #    into the transform, so the model sees normalised protected images.
    train_set, test_set = make_synthetic(args.train_size, args.test_size)
    keys = kpfast.KeySet.generate(block_size=4, channels=3)
    stats = channel_stats(train_set.images)

    def make_transform(k):  # the transform for a key set (or a list of them): one recipe for all
        return kpfast.BlockTransform(k, OPS, mean=stats.mean, std=stats.std)

    # 2. Train on protected images (the data stays on the device, augmented there on uint8).
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=train_set.num_classes)
    loader = DeviceLoader(train_set, 128, device=args.device, shuffle=True, augment=True)
    train(model, make_transform(keys), loader, epochs=args.epochs, device=args.device, progress=False)

    # 3. Correct key, fresh wrong keys (CSPRNG), plain images.
    results = evaluate_protection(model, make_transform, keys, test_set, wrong_keys=args.wrong_keys,
                                  device=args.device)
    print(format_markdown(results))

    # 4. What you deploy: the model behind its transform, taking uint8 or [0, 1] images.
    protected = ProtectedModel(model, make_transform(keys)).eval()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.pt"
        protected.save(path)  # weights, architecture, transform settings, the key's fingerprint
        loaded = ProtectedModel.load(path, keys)
        with torch.inference_mode():
            same = torch.equal(loaded(test_set.images[:64]), protected.cpu()(test_set.images[:64]))
        print(f"\nsaved and loaded with its key: same predictions: {same}")
        try:
            ProtectedModel.load(path, kpfast.KeySet.generate(block_size=4, channels=3))
        except KeyMismatchError as e:
            print(f"loaded with another key: refused ({type(e).__name__})")


if __name__ == "__main__":
    main()
