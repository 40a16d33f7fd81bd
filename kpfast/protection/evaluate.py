"""How well does the key protect a model? Accuracy with the right key, wrong keys, and no key.

:func:`accuracy_per_key` scores a classifier behind many key sets at once (many keys per launch,
docs/semantics.md §5): the wrong keys here and the key searches of :mod:`kpfast.protection.attacks`
run on it. Results hold key fingerprints only, never key material, so they can be published as
they are.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..engine.amp import Amp, autocast
from ..engine.classifier import batches, evaluate
from ..engine.device import resolve_device
from ..errors import ConfigError, DataError
from ..keys import KeySet
from ..normalize import Normalize
from ..report.tables import markdown_table, percent
from .model import ProtectedModel, transform_from_config

if TYPE_CHECKING:
    from ..data.imageset import ImageSet

KEYS_PER_LAUNCH = 64  # key sets compiled into one transform and scored in one model call
IMAGES_PER_LAUNCH = 1024  # images (all keys together) per model call: bounds the activations


def accuracy_per_key(
    model: nn.Module,
    keys: Sequence[Any],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    make_transform: Callable[[Any], nn.Module] | None = None,
    keys_per_launch: int = KEYS_PER_LAUNCH,
    images_per_launch: int = IMAGES_PER_LAUNCH,
    device: str | torch.device | None = None,
    amp: Amp = "auto",
    with_loss: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Accuracy of a classifier on images ``x`` with labels ``y`` behind each of ``keys``.

    Up to ``keys_per_launch`` key sets are compiled into one transform; each model call then
    takes a batch of images once per key (``x`` repeated, ``key_index`` saying which key each copy
    uses), ``images_per_launch`` images in all. The predictions are those of scoring every key
    alone (the transform is bit-identical per image; tests/test_attacks_scoring.py).

    Args:
        model: a :class:`ProtectedModel` (its network behind its own chain, rebuilt from its
            config for the given keys), or a bare classifier together with ``make_transform``.
        keys: K key sets.
        x, y: uint8 (or [0, 1] float) images [N, C, H, W] and int64 labels [N].
        make_transform: ``keys -> transform``; it gets a list of up to ``keys_per_launch`` key
            sets and must accept ``key_index`` (e.g. ``lambda ks: BlockTransform(ks, ops)``), or a
            single key set when ``keys_per_launch`` is 1 (any keyed transform).
        device: where to run (default: the model's).
        amp: autocast policy (:mod:`kpfast.engine.amp`).
        with_loss: also return each key's mean cross-entropy (a finer score than accuracy).

    Returns:
        float64 [K] accuracies in [0, 1] (and float64 [K] mean losses with ``with_loss``).

    Example::

        acc = accuracy_per_key(protected, KeySet.generate_many(1000, 4), images, labels)
    """
    if isinstance(model, ProtectedModel):
        config = model.transform.config()
        make_transform = make_transform or (lambda k: transform_from_config(config, k))
        model = model.model
    if make_transform is None:
        raise ConfigError("accuracy_per_key needs make_transform for a model that is not a ProtectedModel")
    keys = list(keys)
    if not keys:
        raise ConfigError("accuracy_per_key needs at least one key set")
    for name, value in (("keys_per_launch", keys_per_launch), ("images_per_launch", images_per_launch)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name} must be an int >= 1, got {value!r}")
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or len(x) != len(y) or len(y) == 0:
        raise DataError(f"need as many labels as images, and at least one: got {_length(x)} images and "
                        f"{_length(y)} labels")
    device = resolve_device(device) if device is not None else _device_of(model)
    count = len(keys)
    per_key = max(1, images_per_launch // min(keys_per_launch, count))  # images per key in one call
    correct = torch.zeros(count, dtype=torch.int64, device=device)
    loss = torch.zeros(count, dtype=torch.float64, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), autocast(device, amp):
            for start in range(0, count, keys_per_launch):
                chunk = keys[start:start + keys_per_launch]
                k = len(chunk)
                transform = make_transform(chunk if keys_per_launch > 1 else chunk[0]).to(device)
                key_index = torch.arange(k, device=device)
                for xs, ys in zip(x.split(per_key), y.split(per_key)):
                    xs, ys = xs.to(device, non_blocking=True), ys.to(device, non_blocking=True)
                    b = len(ys)
                    inputs = transform(xs) if k == 1 else transform(xs.repeat(k, 1, 1, 1), key_index.repeat_interleave(b))
                    logits = model(inputs).float().view(k, b, -1)
                    correct[start:start + k] += (logits.argmax(2) == ys).sum(1)
                    if with_loss:
                        loss[start:start + k] += F.cross_entropy(logits.flatten(0, 1), ys.repeat(k),
                                                                 reduction="none").view(k, b).sum(1).double()
    finally:
        model.train(was_training)
    accuracy = correct.cpu().double() / len(y)
    return (accuracy, loss.cpu() / len(y)) if with_loss else accuracy


def _length(t: object) -> object:
    return len(t) if isinstance(t, torch.Tensor) and t.dim() else type(t).__name__


def _device_of(model: nn.Module) -> torch.device:
    tensor = next(iter([*model.parameters(), *model.buffers()]), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def evaluate_protection(
    model: nn.Module,
    make_transform: Callable[[KeySet], nn.Module],
    keys: KeySet,
    test_set: ImageSet,
    *,
    wrong_keys: int | Sequence[KeySet] = 10,
    generate_key: Callable[[], KeySet] | None = None,
    seed: int | None = None,
    device: str | torch.device,
    batch_size: int = 500,
    keys_per_launch: int = KEYS_PER_LAUNCH,
    amp: Amp = "auto",
) -> dict[str, Any]:
    """Evaluate `model(make_transform(k)(x))` on `test_set` (an ImageSet) for:

    - the correct `keys` (accuracy, loss, per-class accuracy);
    - wrong keys: `wrong_keys` fresh ones from `generate_key()` (default: new random keys of the
      same block size, channel count and grid, `type(keys).generate_many(...)`: from the OS CSPRNG, or
      reproducibly from `seed`), or the given list; reported as mean/min/max accuracy. They are
      scored with :func:`accuracy_per_key`, `keys_per_launch` at a time when they are KeySets
      (then `make_transform` also gets lists of them), else one at a time;
    - plain images (the attacker has no key and feeds normalised images, same mean/std).
    """
    correct_transform = make_transform(keys).to(device)
    config = correct_transform.config()
    # Plain images get the same normalisation as the keyed ones (none: just x/255).
    plain_transform = Normalize(config.get("mean") or (0.0,), config.get("std") or (1.0,))
    if isinstance(wrong_keys, int):
        if generate_key is not None:
            wrong_keys = [generate_key() for _ in range(wrong_keys)]
        else:
            rng = None if seed is None else np.random.default_rng(seed)
            wrong_keys = type(keys).generate_many(wrong_keys, keys.block_size, keys.channels, grid=keys.grid, rng=rng)
    if not wrong_keys:
        raise ConfigError("need at least one wrong key")
    if any(k.fingerprint() == keys.fingerprint() for k in wrong_keys):
        raise ConfigError("a 'wrong' key equals the correct key")

    test_batches = batches(test_set.images, test_set.labels, batch_size)

    def run(transform: nn.Module) -> dict[str, Any]:
        return evaluate(model, transform.to(device), test_batches, device, amp=amp)

    right = run(correct_transform)
    batched = all(isinstance(k, KeySet) for k in wrong_keys)
    wrong = accuracy_per_key(model, wrong_keys, test_set.images, test_set.labels, make_transform=make_transform,
                             keys_per_launch=keys_per_launch if batched else 1, images_per_launch=batch_size,
                             device=device, amp=amp).tolist()
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

