"""Attack 4, fine-tuning: does stealing the protected weights help an attacker without the key?

Threat model: the attacker holds the protected model file (not the key) and n plain labelled
images. They fine-tune the stolen weights on plain images and use the model on plain images.
The claim "no advantage from stealing the model" holds if that does no better than training the
same architecture from scratch on the same n images with the same budget. A third run
fine-tunes the stolen weights behind a fresh key of the attacker's own (the same chain): can a
stolen model be re-keyed cheaply?

Every run trains through :func:`kpfast.engine.train` (SGD, one-cycle schedule, augmentation on
the device), resumable from its checkpoint; the budget is ``steps`` optimizer steps of
``batch_size`` images for every n (``epochs = round(steps / batches per epoch)``, at least 1).
The from-scratch runs do not depend on the stolen model: with ``cache`` they are kept there by
their settings and shared between models. Under ``torchrun`` every run trains data-parallel
(``batch_size`` is the global batch; ``torchrun --nproc-per-node N -m kpfast attack finetune ...``)
and rank 0 writes the records.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...atomic import write_json
from ...data import DeviceLoader, ImageSet
from ...engine.classifier import DEFAULTS, batches, evaluate, train
from ...engine.ranks import Ranks
from ...errors import ConfigError, DataError
from ...keys import KeySet
from ...models import create_model
from .scoring import StolenModel, check_images, positive, sample

VARIANTS = ("stolen", "scratch", "own-key")
LABELS = {"stolen": "stolen weights, fine-tuned on plain images", "scratch": "from scratch, plain images",
          "own-key": "stolen weights, fine-tuned behind the attacker's own key"}


@dataclass
class FinetuneResult:
    sizes: list[int]  # n, the attacker's labelled images per run
    fractions: list[float]  # n over the training set
    steps: int
    batch_size: int
    lr: float
    seed: int
    test_images: int
    stolen_plain_accuracy: float  # the stolen model on plain test images, before any training
    runs: list[dict[str, Any]]  # variant, images, epochs, steps, test_accuracy, loss per epoch, seconds
    notes: list[str] = field(default_factory=list)

    def accuracy(self, variant: str, n: int) -> float:
        return next(r["test_accuracy"] for r in self.runs if r["variant"] == variant and r["images"] == n)

    def advantage(self, n: int) -> float:
        """Fine-tuned stolen weights minus from scratch, in accuracy (fraction)."""
        return self.accuracy("stolen", n) - self.accuracy("scratch", n)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["advantage"] = {str(n): self.advantage(n) for n in self.sizes}
        return d


def sizes_from_fractions(fractions: Sequence[float], train_images: int) -> list[int]:
    """n = round(fraction x training images) for each fraction in (0, 1]."""
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise ConfigError(f"fractions must lie in (0, 1], got {list(fractions)!r}")
    return [max(1, round(f * train_images)) for f in fractions]


def finetune_attack(stolen: StolenModel, train_set: ImageSet, test_set: ImageSet, *, sizes: Sequence[int],
                    steps: int = 100, batch_size: int = 64, lr: float = DEFAULTS.lr, seed: int = 0,
                    variants: Sequence[str] = VARIANTS, out: str | Path | None = None,
                    cache: str | Path | None = None, progress: bool = False) -> FinetuneResult:
    """Fine-tune the stolen model on n plain labelled images of ``train_set`` for each n in ``sizes``
    (a random sample from ``seed``), beside training from scratch, and score every run on ``test_set``.

    ``out`` keeps each run's checkpoint while it trains and its record when done (a re-run skips
    finished runs); ``cache`` keeps the from-scratch records for other models (default: ``out``).
    """
    positive("steps", steps)
    positive("batch_size", batch_size)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise ConfigError(f"variants must be some of {', '.join(VARIANTS)}, got {list(variants)!r}")
    check_images(stolen, train_set.images, train_set.labels, "training images")
    check_images(stolen, test_set.images, test_set.labels, "test images")
    if not sizes:
        raise ConfigError("need at least one size n")
    for n in sizes:
        positive("n", n)
        if n > len(train_set):
            raise DataError(f"n = {n} images asked for, but the training set has only {len(train_set)}")
    test = batches(test_set.images, test_set.labels, 500)
    ranks = Ranks.current()  # under torchrun every run trains data-parallel; rank 0 writes the records
    plain = stolen.plain()
    start = evaluate(stolen.network, plain, test, stolen.device)["accuracy"]
    runs = []
    for n in sizes:
        subset = sample(train_set, n, seed)
        per_epoch = math.ceil(len(subset) / batch_size)
        epochs = max(1, round(steps / per_epoch))
        settings = {"arch": stolen.arch, "images": len(subset), "epochs": epochs, "batch_size": batch_size, "lr": lr,
                    "seed": seed, "train_images": len(train_set), "test_images": len(test_set),
                    "shape": list(train_set.images.shape[1:]), "normalize": [stolen.config.get("mean"),
                                                                             stolen.config.get("std")]}
        for variant in variants:
            keyed = variant != "scratch"
            # From scratch, nothing of the stolen model is used (its chain neither): models share it.
            record_settings = json.loads(json.dumps({**settings, "variant": variant,
                                                     "ops": list(stolen.ops) if keyed else None,
                                                     "stolen": stolen.key_fingerprint if keyed else None}))
            folder = cache if (cache is not None and not keyed) else out
            folder = Path(folder) if folder is not None else None
            name = f"{variant}-{n}-" + _digest(record_settings)
            record = _load(folder, name)
            if record is None:
                record = _train_one(stolen, variant, subset, test, epochs, batch_size, lr, seed,
                                    None if folder is None else folder / name, progress and ranks.is_main)
                record.update(images=len(subset), requested=n, epochs=epochs, steps=epochs * per_epoch,
                              settings=record_settings)
                if folder is not None and ranks.is_main:
                    folder.mkdir(parents=True, exist_ok=True)
                    write_json(folder / f"{name}.json", record)
                    shutil.rmtree(folder / name, ignore_errors=True)  # the record replaces the checkpoint
                ranks.barrier()
            record["variant"] = variant
            runs.append(record)
    return FinetuneResult(sizes=[r["images"] for r in runs if r["variant"] == variants[0]],
                          fractions=[n / len(train_set) for n in sizes], steps=steps, batch_size=batch_size, lr=lr,
                          seed=seed, test_images=len(test_set), stolen_plain_accuracy=start, runs=runs)


def _train_one(stolen: StolenModel, variant: str, subset: ImageSet, test: list, epochs: int, batch_size: int,
               lr: float, seed: int, checkpoint: Path | None, progress: bool) -> dict[str, Any]:
    if variant == "scratch":
        torch.manual_seed(seed)
        network = create_model(stolen.arch, stolen.network.num_classes, stolen.channels)
    else:
        network = copy.deepcopy(stolen.network)
    if variant == "own-key":  # the attacker's own key: reproducible for evaluation, never a secret
        transform = stolen.transform(KeySet.generate(stolen.block_size, stolen.channels, grid=stolen.grid,
                                                     rng=np.random.default_rng([seed, 1])))
    else:
        transform = stolen.plain()
    loader = DeviceLoader(subset, batch_size, device=stolen.device, shuffle=True, augment=True, seed=seed,
                          ranks=Ranks.current())
    result = train(network, transform, loader, epochs=epochs, lr=lr, device=stolen.device, seed=seed,
                   checkpoint_dir=checkpoint, resume=checkpoint is not None, progress=progress,
                   log=lambda _: None)
    accuracy = evaluate(network, transform, test, stolen.device)["accuracy"]
    return {"test_accuracy": accuracy, "loss": result.loss, "seconds": sum(result.seconds)}


def _digest(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


def _load(folder: Path | None, name: str) -> dict[str, Any] | None:
    if folder is None:
        return None
    try:
        return json.loads((folder / f"{name}.json").read_text())
    except FileNotFoundError:
        return None
