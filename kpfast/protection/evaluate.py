"""How well does the key protect a model? Accuracy with the right key, wrong keys, and no key.

Results hold key fingerprints only, never key material, so they can be published as they are.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..engine.amp import Amp
from ..engine.classifier import batches, evaluate
from ..errors import ConfigError
from ..normalize import Normalize
from ..report.tables import markdown_table, percent

if TYPE_CHECKING:
    from ..data.imageset import ImageSet
    from ..keys import KeySet


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
    amp: Amp = "auto",
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
        raise ConfigError("need at least one wrong key")
    if any(k.fingerprint() == keys.fingerprint() for k in wrong_keys):
        raise ConfigError("a 'wrong' key equals the correct key")

    test_batches = batches(test_set.images, test_set.labels, batch_size)

    def run(transform: nn.Module) -> dict[str, Any]:
        return evaluate(model, transform.to(device), test_batches, device, amp=amp)

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


def evaluate_plain(model: nn.Module, transform: nn.Module, test_set: ImageSet, *, device: str | torch.device,
                   batch_size: int = 500) -> dict[str, Any]:
    """The counterpart of `evaluate_protection` for a plain model: it has no key to get right or
    wrong, so it is measured on plain images only."""
    plain = evaluate(model, transform, batches(test_set.images, test_set.labels, batch_size), device)
    return {
        "num_images": len(test_set.labels),
        "chance": 1 / len(test_set.classes),
        "transform": transform.config(),
        "key_fingerprint": None,
        "plain_images": {"accuracy": plain["accuracy"], "loss": plain["loss"],
                         "per_class_accuracy": dict(zip(test_set.classes, plain["per_class_accuracy"]))},
    }


def format_markdown(results: dict[str, Any]) -> str:
    """A short Markdown report of `evaluate_protection` (or `evaluate_plain`) results."""
    if results["key_fingerprint"] is None:
        plain = results["plain_images"]
        lines = [f"Plain model (no key), {results['num_images']} test images.", ""]
        lines += markdown_table(["input", "accuracy"], [["plain images", percent(plain["accuracy"])],
                                                        ["chance", percent(results["chance"])]])
        per_class, header = plain["per_class_accuracy"], ["class", "accuracy"]
    else:
        w = results["wrong_keys"]
        lines = [f"Key fingerprint `{results['key_fingerprint']}`, {results['num_images']} test images.", ""]
        lines += markdown_table(["input", "accuracy"], [
            ["correct key", percent(results["correct_key"]["accuracy"])],
            [f"wrong keys ({w['count']}): mean [min, max]",
             f"{percent(w['mean'])} [{percent(w['min'])}, {percent(w['max'])}]"],
            ["plain images (no key)", percent(results["plain_images"]["accuracy"])],
            ["chance", percent(results["chance"])]])
        per_class, header = results["correct_key"]["per_class_accuracy"], ["class", "accuracy, correct key"]
    lines += ["", *markdown_table(header, ([name, percent(acc)] for name, acc in per_class.items()))]
    return "\n".join(lines) + "\n"

