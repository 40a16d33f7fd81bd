"""Protecting a trained model without training: how long it takes, and what it does to the
predictions (the table of benchmarks/results/model-transform.md).

For a plain model file (``kpfast train --ops plain``) and a key file (written here if absent):

* the time to fold the key into the model (:func:`kpfast.protection.model_transform.protect`),
  median of ``--repeats`` runs, beside the model's training time from its ``train.json``;
* on the test set: the plain model's accuracy; the protected model's with the key, and how many
  of its predictions are the plain model's (image for image) and the largest logit difference;
  with ``--wrong-keys`` fresh wrong keys (for the key's grid when the chain scrambles blocks);
  and on plain images.

    python benchmarks/model_transform_speed.py --model runs/vit-plain/model.pt --key vit.key \\
        --ops shuffle,negpos,scramble --data fashion-mnist --wrong-keys 20 --out vit-protected.pt

Prints one JSON object (key fingerprints, never keys); ``--out`` also saves the protected model.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from kpfast.cli.protect_model import chain
from kpfast.keys import KeySet
from kpfast.protection import ProtectedModel, experiment
from kpfast.protection.evaluate import evaluate_protection
from kpfast.protection.model import transform_from_config
from kpfast.protection.model_transform import protect


def predictions(model: ProtectedModel, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Logits of a ProtectedModel (its transform, then its network), in batches."""
    with torch.no_grad():
        return torch.cat([model(x) for x in images.split(batch_size)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a plain model.pt")
    p.add_argument("--key", required=True, help="key file (a fresh key for the test images' grid if absent)")
    p.add_argument("--ops", required=True, type=chain)
    p.add_argument("--data", required=True)
    p.add_argument("--data-root")
    p.add_argument("--test-subset", type=int)
    p.add_argument("--wrong-keys", type=int, default=20)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", help="where to save the protected model")
    args = p.parse_args()

    plain = ProtectedModel.load(args.model)
    plain.model.eval()
    _, test_set = experiment.load_data(experiment.RunConfig(data=args.data, data_root=args.data_root,
                                                            test_subset=args.test_subset), progress=False)
    M, C = plain.model.patch_size, plain.model.in_channels
    grid = tuple(s // M for s in test_set.images.shape[2:]) if "scramble" in args.ops else None
    if os.path.lexists(args.key):
        keys = KeySet.load(args.key)
    else:
        keys = KeySet.generate(M, C, grid=grid)
        keys.save(args.key)

    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        protected = protect(plain, keys, args.ops)
        times.append(time.perf_counter() - start)
    if args.out:
        protected.save(args.out)
    protected.model.eval()

    x, y = test_set.images, test_set.labels
    want, got = predictions(plain, x), predictions(protected, x)
    config = protected.transform.config()
    wrong = KeySet.generate_many(args.wrong_keys, M, C, grid=keys.grid)
    scores = evaluate_protection(protected.model, lambda k: transform_from_config(config, k), keys, test_set,
                                 wrong_keys=wrong, device="cpu")
    train = json.loads((Path(args.model).parent / "train.json").read_text())
    print(json.dumps({
        "model": type(plain.model).__name__, "ops": list(args.ops), "key_fingerprint": keys.fingerprint(),
        "test_images": len(y), "threads": torch.get_num_threads(),
        "protect_ms": {"median": 1000 * statistics.median(times), "min": 1000 * min(times), "repeats": len(times)},
        "training_seconds": train["wall_seconds"], "train_images": train["train_images"],
        "epochs": len(train["history"]["loss"]),
        "plain_accuracy": (want.argmax(1) == y).double().mean().item(),
        "key_accuracy": scores["correct_key"]["accuracy"],
        "same_predictions": int((got.argmax(1) == want.argmax(1)).sum()),
        "max_abs_logit_difference": (got - want).abs().max().item(), "logit_scale": want.abs().max().item(),
        "wrong_keys": {k: scores["wrong_keys"][k] for k in ("count", "mean", "min", "max")},
        "plain_images_accuracy": scores["plain_images"]["accuracy"],
    }, indent=1))


if __name__ == "__main__":
    main()
