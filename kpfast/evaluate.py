"""How well does the key protect a model? Accuracy with the right key, wrong keys, and no key.

Results hold key fingerprints only, never key material, so they can be published as they are.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from .normalize import Normalize
from .atomic import atomic_write
from .train import evaluate

if TYPE_CHECKING:
    from .data.imageset import ImageSet
    from .keys import KeySet


def evaluate_protection(
    model: nn.Module,
    make_transform: Callable[[KeySet], nn.Module],
    keys: KeySet,
    test_set: ImageSet,
    *,
    wrong_keys: int | Sequence[KeySet] = 10,
    generate_key: Callable[[], KeySet] | None = None,
    device: str | torch.device,
    batch_size: int = 500,
    amp: bool | Literal["auto"] = "auto",
) -> dict[str, Any]:
    """Evaluate `model(make_transform(k)(x))` on `test_set` (an ImageSet) for:

    - the correct `keys` (accuracy, loss, per-class accuracy);
    - wrong keys: `wrong_keys` fresh ones from `generate_key()` (default: new random keys of the
      same block size and channel count, `type(keys).generate(...)`), or the given list;
      reported as mean/min/max accuracy;
    - plain images (the attacker has no key and feeds normalised images, same mean/std).
    """
    correct_transform = make_transform(keys).to(device)
    config = correct_transform.config()
    # Plain images get the same normalisation as the keyed ones (none: just x/255).
    plain_transform = Normalize(config.get("mean") or (0.0,), config.get("std") or (1.0,))
    if isinstance(wrong_keys, int):
        if generate_key is None:
            generate_key = lambda: type(keys).generate(keys.block_size, keys.channels)  # noqa: E731
        wrong_keys = [generate_key() for _ in range(wrong_keys)]
    if not wrong_keys:
        raise ValueError("need at least one wrong key")
    if any(k.fingerprint() == keys.fingerprint() for k in wrong_keys):
        raise ValueError("a 'wrong' key equals the correct key")

    # Slices are views: batching costs no copy of the test set.
    batches = list(zip(test_set.images.split(batch_size), test_set.labels.split(batch_size)))

    def run(transform: nn.Module) -> dict[str, Any]:
        return evaluate(model, transform.to(device), batches, device, amp=amp)

    right = run(correct_transform)
    wrong = [run(make_transform(k))["accuracy"] for k in wrong_keys]
    plain = run(plain_transform)
    return {
        "num_images": len(test_set.labels),
        "chance": 1 / len(test_set.classes),
        "transform": config,
        "key_fingerprint": keys.fingerprint(),
        "correct_key": {
            "accuracy": right["accuracy"],
            "loss": right["loss"],
            "per_class_accuracy": dict(zip(test_set.classes, right["per_class_accuracy"])),
        },
        "wrong_keys": {
            "count": len(wrong),
            "mean": statistics.fmean(wrong),
            "min": min(wrong),
            "max": max(wrong),
            "accuracies": wrong,
            "fingerprints": [k.fingerprint() for k in wrong_keys],
        },
        "plain_images": {"accuracy": plain["accuracy"], "loss": plain["loss"]},
    }


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f} %"


def format_markdown(results: dict[str, Any]) -> str:
    """A short Markdown report of `evaluate_protection` results."""
    w = results["wrong_keys"]
    lines = [
        f"Key fingerprint `{results['key_fingerprint']}`, {results['num_images']} test images.",
        "",
        "| input | accuracy |",
        "|---|---|",
        f"| correct key | {_pct(results['correct_key']['accuracy'])} |",
        f"| wrong keys ({w['count']}): mean [min, max] | {_pct(w['mean'])} [{_pct(w['min'])}, {_pct(w['max'])}] |",
        f"| plain images (no key) | {_pct(results['plain_images']['accuracy'])} |",
        f"| chance | {_pct(results['chance'])} |",
        "",
        "| class | accuracy, correct key |",
        "|---|---|",
    ]
    lines += [f"| {name} | {_pct(acc)} |" for name, acc in results["correct_key"]["per_class_accuracy"].items()]
    return "\n".join(lines) + "\n"


def write_json(results: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write results as indented JSON, atomically."""
    data = (json.dumps(results, indent=2) + "\n").encode("utf-8")
    atomic_write(path, lambda f: f.write(data))
