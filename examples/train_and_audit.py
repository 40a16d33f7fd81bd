"""Train and audit a protected model: how well does the key protect it against an attacker?

1. a protected model trained on key-transformed images (as in train_protected_model.py);
2. the attacker's view: the model file's weights and public transform settings, never the key;
3. the attacks the literature uses, each at a small budget, scored on test images:
   - the size of the key space (what brute force faces);
   - random key search: many random keys, the best kept (successive halving);
   - key estimation: local search by swaps and bit flips from a random key;
   - known plaintext: what a few (plain, protected) image pairs reveal of the key;
   - fine-tuning the stolen weights on a few plain labelled images, beside training from scratch.

    python examples/train_and_audit.py [--train-size 5000] [--epochs 6] [--search-keys 2000]

`kpfast audit` runs the same attacks on a saved model, resumably, with a report.
"""
import argparse

import torch

import kpfast
from kpfast.data import DeviceLoader, channel_stats, make_synthetic
from kpfast.engine import train
from kpfast.models import create_model
from kpfast.protection import ProtectedModel
from kpfast.protection.attacks import (
    estimate_key,
    finetune_attack,
    key_space,
    known_plaintext,
    random_key_search,
    stolen_from,
)

OPS = ("shuffle", "negpos", "ffx")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=5000)
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--block-size", "-M", type=int, default=4, help="key estimation costs grow as (M*M*3)^2")
    parser.add_argument("--attacker-images", type=int, default=128, help="labelled images the attacker holds")
    parser.add_argument("--search-keys", type=int, default=2000, help="keys the random search tries")
    parser.add_argument("--estimate-passes", type=int, default=1)
    parser.add_argument("--finetune-steps", type=int, default=100)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    # 1. The owner: data, a secret key, a protected model.
    train_set, test_set = make_synthetic(args.train_size, args.test_size)
    keys = kpfast.KeySet.generate(block_size=args.block_size, channels=3)
    stats = channel_stats(train_set.images)
    transform = kpfast.BlockTransform(keys, OPS, mean=stats.mean, std=stats.std)
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=train_set.num_classes)
    train(model, transform, DeviceLoader(train_set, 128, device=args.device, augment=True), epochs=args.epochs,
          device=args.device, progress=False)
    protected = ProtectedModel(model, transform).eval()

    # 2. The attacker: the weights and the public config (stolen_from drops the key), a few
    #    labelled images, and test images to score each attack's key on.
    stolen = stolen_from(protected)
    x, y = train_set.images[:args.attacker_images], train_set.labels[:args.attacker_images]
    test_x, test_y = test_set.images, test_set.labels
    # true_key only measures how much of the key an attack recovered; it never steers the attack.
    print(f"key space of {'+'.join(OPS)} at M={args.block_size}: "
          f"2^{key_space(OPS, args.block_size).total_bits:.0f} key sets")

    search = random_key_search(stolen, x, y, test_x, test_y, num_keys=args.search_keys, batch=len(x),
                               true_key=keys)
    print(f"random key search, {search.keys_tried} keys: best key {search.best_test_accuracy:.1%} on test images")

    estimate = estimate_key(stolen, x, y, test_x, test_y, batch=len(x), passes=args.estimate_passes,
                            true_key=keys)
    print(f"key estimation, {len(estimate.passes)} pass(es): {estimate.passes[-1]['test_accuracy']:.1%} "
          f"on test images (from {estimate.start_test_accuracy:.1%})")

    pairs = test_x[:4]
    with torch.inference_mode():
        protected_pairs = protected.transform(pairs)
    plaintext = known_plaintext(stolen, pairs, protected_pairs, test_x, test_y, true_key=keys)
    print(f"known plaintext, {plaintext.pairs} pairs: {plaintext.key_determined:.1%} of the key determined, "
          f"{plaintext.test_accuracy:.1%} on test images with the recovered key")

    finetune = finetune_attack(stolen, train_set, test_set, sizes=[args.attacker_images],
                               steps=args.finetune_steps)
    runs = ", ".join(f"{r['variant']} {r['test_accuracy']:.1%}" for r in finetune.runs)
    print(f"fine-tuning on {args.attacker_images} plain images: {runs}")

    owner = (protected(test_x).argmax(1) == test_y).float().mean().item()
    print(f"the owner, with the key: {owner:.1%}")


if __name__ == "__main__":
    main()
