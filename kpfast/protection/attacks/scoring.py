"""What every attack shares: the stolen model, the attacker's candidate keys, and scoring many
candidate keys at once.

Threat model: the attacker holds a protected model file (weights, architecture and the public
transform config: chain, block size, channels, normalisation; never the key). :func:`load_stolen`
reads exactly that. Candidate keys are scored with
:func:`kpfast.protection.evaluate.accuracy_per_key` (many keys per launch through ``key_index``);
:func:`rank_keys` orders them by (correct predictions, then lower loss), and
:func:`halving_schedule` plans successive halving (every key on a few images, only the best on more).
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ...data.imageset import ImageSet
from ...engine.device import resolve_device
from ...errors import CheckpointError, ConfigError, DataError, KeyMismatchError
from ...keys import KeySet
from ...models import create_model
from ...normalize import Normalize
from ...report.progress import bar
from ..evaluate import IMAGES_PER_LAUNCH, KEYS_PER_LAUNCH, accuracy_per_key
from ..model import ProtectedModel, transform_from_config

# FFX codes are 3-digit decimal numbers (docs/semantics.md §3): an FFX table is an injective map
# of the 256 byte values into 0..999.
FFX_CODES = 1000
CANDIDATE_SPACES = ("generate", "tables", "seed")
KEY_PARTS = {"shuffle": ("perm",), "negpos": ("np_mask",), "ffx": ("ffx_mask", "ffx_lut"),
             "scramble": ("block_perm",)}  # what the attacks cover


@dataclass
class StolenModel:
    """What the attacker holds: the network (in eval mode) and the public config of its transform.

    ``transform(keys)`` builds the model's own chain for any key set (or a list of them, for
    ``key_index``); ``plain()`` is what an attacker without a key feeds it (the same Normalize).
    """

    network: nn.Module
    config: dict[str, Any]  # BlockTransform.config(): ops, block_size, channels, mean, std, rounding, ...
    key_fingerprint: str
    arch: str
    device: torch.device

    @property
    def ops(self) -> tuple[str, ...]:
        return tuple(self.config["ops"])

    @property
    def block_size(self) -> int:
        return self.config["block_size"]

    @property
    def grid(self) -> tuple[int, int] | None:
        """The grid of blocks a chain with ``"scramble"`` was made for (None for other chains)."""
        grid = self.config.get("grid")
        return None if grid is None else (int(grid[0]), int(grid[1]))

    @property
    def channels(self) -> int:
        return self.config["channels"]

    @property
    def num_positions(self) -> int:
        return self.block_size ** 2 * self.channels

    def transform(self, keys: KeySet | Sequence[KeySet]) -> nn.Module:
        return transform_from_config(self.config, keys).to(self.device)

    def plain(self) -> nn.Module:
        return Normalize(self.config.get("mean") or (0.0,), self.config.get("std") or (1.0,)).to(self.device)

    def accuracy(self, keys: Sequence[KeySet], x: torch.Tensor, y: torch.Tensor, *,
                 keys_per_launch: int = KEYS_PER_LAUNCH, images_per_launch: int = IMAGES_PER_LAUNCH,
                 with_loss: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """:func:`accuracy_per_key` of the network behind its chain, for each key set."""
        return accuracy_per_key(self.network, keys, x, y, make_transform=self.transform,
                                keys_per_launch=keys_per_launch, images_per_launch=images_per_launch,
                                device=self.device, with_loss=with_loss)

    def check_key(self, keys: KeySet | None, what: str = "key") -> None:
        """The evaluation-mode key (only used to score an attack) must be this model's key."""
        if keys is None:
            return
        if (keys.block_size, keys.channels) != (self.block_size, self.channels):
            raise KeyMismatchError(f"the {what} is for {keys.block_size}x{keys.block_size} blocks of {keys.channels} "
                                   f"channel(s), the model for {self.block_size}x{self.block_size} blocks of "
                                   f"{self.channels}")
        if keys.fingerprint() != self.key_fingerprint:
            raise KeyMismatchError(f"the {what} is not this model's key: the model expects fingerprint "
                                   f"{self.key_fingerprint}, the key has {keys.fingerprint()}")


def load_stolen(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> StolenModel:
    """A protected model file as an attacker sees it: weights and public config, no key.

    Raises CheckpointError for a file that is not a kpfast model, and ConfigError for a plain
    model (it has no key to attack) or one whose transform is not a block-transform chain."""
    data = ProtectedModel.read(path)
    config = data["transform"]
    if data["key_fingerprint"] is None or config.get("type") != "block":
        raise ConfigError(f"{os.fspath(path)} is a plain model: it has no key to attack")
    _check_chain(config["ops"], os.fspath(path))
    network = create_model(data["arch"], data["num_classes"], data["in_channels"])
    try:
        network.load_state_dict(data["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(f"{os.fspath(path)}: its weights do not fit a {data['arch']}: {e}") from None
    device = resolve_device(device)
    return StolenModel(network.to(device).eval(), config, data["key_fingerprint"], data["arch"], device)


def stolen_from(protected: ProtectedModel) -> StolenModel:
    """The attacker's view of a ProtectedModel in memory (its key is not carried over)."""
    checkpoint = protected.checkpoint()
    if checkpoint["key_fingerprint"] is None or checkpoint["transform"].get("type") != "block":
        raise ConfigError("a plain model has no key to attack")
    _check_chain(checkpoint["transform"]["ops"], "this model")
    device = next(protected.model.parameters()).device
    return StolenModel(protected.model.eval(), checkpoint["transform"], checkpoint["key_fingerprint"],
                       checkpoint["arch"], device)


def _check_chain(ops: Sequence[str], what: str) -> None:
    unknown = [op for op in ops if op not in KEY_PARTS]
    if unknown:
        raise ConfigError(f"{what} uses {', '.join(unknown)}: the attacks cover {', '.join(KEY_PARTS)} only")


def check_images(stolen: StolenModel, x: torch.Tensor, y: torch.Tensor | None = None, what: str = "images") -> None:
    """Clear errors for data the model cannot take."""
    if x.dim() != 4 or x.shape[1] != stolen.channels:
        raise DataError(f"the model takes {stolen.channels}-channel images [N, C, H, W], the {what} are "
                        f"{tuple(x.shape)}")
    h, w = x.shape[2:]
    if h % stolen.block_size or w % stolen.block_size:
        raise DataError(f"the {what} are {h}x{w}, not divisible by the model's block size {stolen.block_size}")
    if y is not None and int(y.max()) >= stolen.network.num_classes:
        raise DataError(f"the {what} have labels up to {int(y.max())}, the model knows {stolen.network.num_classes} classes")


def positive(name: str, value: Any) -> int:
    """An int budget >= 1, or a ConfigError that names it."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be an int >= 1, got {value!r}")
    return value


def sample(images: ImageSet, n: int, seed: int, what: str = "n") -> ImageSet:
    """The attacker's n labelled images: a random sample (from ``seed``) of ``images``."""
    positive(what, n)
    if n > len(images):
        raise DataError(f"{what} = {n} images asked for, but the set has only {len(images)}")
    return images.subset(torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n])


def take(n: int, x: torch.Tensor, y: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` images, or a DataError when there are fewer."""
    positive(what, n)
    if n > len(y):
        raise DataError(f"{what} = {n} is more than the {len(y)} images given")
    return x[:n], y[:n]


def used_agreement(keys: KeySet, true_key: KeySet | None, ops: Sequence[str]) -> dict[str, float] | None:
    """:meth:`KeySet.agreement` with the true key, for the parts of the key the chain uses (None
    without a true key)."""
    if true_key is None:
        return None
    agreement = keys.agreement(true_key)
    return {part: agreement[part] for op in ops for part in KEY_PARTS[op]}


# --- the attacker's candidate keys ----------------------------------------------------------------


def random_table(rng: np.random.Generator) -> torch.Tensor:
    """A uniformly random injective map of the 256 bytes into the 1000 FFX codes: the table of an
    ideal FFX (a random permutation of 0..999 restricted to 0..255)."""
    return torch.from_numpy(rng.choice(FFX_CODES, 256, replace=False).astype(np.int64))


def candidate_keys(n: int, block_size: int, channels: int, rng: np.random.Generator, *,
                   space: str = "tables", grid: tuple[int, int] | None = None) -> list[KeySet]:
    """``n`` random key sets for a search.

    space:
        ``"generate"``: :meth:`KeySet.generate_many`'s distribution (a password each: its FFX
        table costs 2,560 HMACs in Python when a chain with FFX first uses it);
        ``"tables"``: the same permutations and masks, each with :func:`random_table` instead of
        a password (an ideal FFX: the same search, without deriving tables);
        ``"seed"``: the reference's keys, :meth:`KeySet.from_seed` of random 32-bit seeds
        (password ``"password"``, masks tied to the permutation).
    grid:
        for a chain with ``"scramble"``: every candidate also gets a uniformly random permutation
        of the ``rows x columns`` block locations (the reference has no block scrambling).
    """
    if space not in CANDIDATE_SPACES:
        raise ConfigError(f"space must be one of {', '.join(CANDIDATE_SPACES)}, got {space!r}")
    if space == "seed":
        keys = [KeySet.from_seed(int(s), block_size, channels) for s in rng.integers(0, 2 ** 32, n)]
        if grid is None:
            return keys
        return [k.replace(block_perm=torch.from_numpy(rng.permutation(grid[0] * grid[1])), grid=grid) for k in keys]
    keys = KeySet.generate_many(n, block_size, channels, grid=grid, rng=rng)
    if space == "tables":
        keys = [k.replace(ffx_lut=random_table(rng)) for k in keys]
    return keys


# --- ranking ----------------------------------------------------------------------------------


@dataclass
class Scores:
    """Per-key totals over the images scored so far (all keys scored on the same images)."""

    correct: torch.Tensor  # int64 [K]
    loss: torch.Tensor  # float64 [K], summed cross-entropy
    images: int

    @property
    def accuracy(self) -> torch.Tensor:
        return self.correct.double() / max(self.images, 1)

    def order(self) -> torch.Tensor:
        """Indices from the best key to the worst: most correct, then the lowest loss."""
        by_loss = torch.argsort(self.loss, stable=True)
        return by_loss[torch.argsort(self.correct[by_loss], descending=True, stable=True)]


def score(stolen: StolenModel, keys: Sequence[KeySet], x: torch.Tensor, y: torch.Tensor, *,
          keys_per_launch: int = KEYS_PER_LAUNCH, images_per_launch: int = IMAGES_PER_LAUNCH) -> Scores:
    """Totals of correct predictions and loss of each key on ``x``. With few images, more keys
    share a launch (up to ``images_per_launch`` images in all)."""
    keys_per_launch = max(keys_per_launch, images_per_launch // max(1, len(y)))
    accuracy, loss = stolen.accuracy(keys, x, y, with_loss=True, keys_per_launch=keys_per_launch,
                                     images_per_launch=images_per_launch)
    n = len(y)
    return Scores((accuracy * n).round().long(), loss * n, n)


def rank_keys(stolen: StolenModel, keys: Sequence[KeySet], x: torch.Tensor, y: torch.Tensor, *,
              chunk: int = 1024, progress: bool = False, desc: str = "keys",
              done: Callable[[int, Scores], None] | None = None, start: Scores | None = None, **launch: int) -> Scores:
    """Score every key on all of ``x`` (``chunk`` keys at a time, for a progress bar and
    ``done(keys_scored, scores_so_far)`` after each chunk; ``start`` resumes from saved totals)."""
    correct = torch.zeros(len(keys), dtype=torch.int64)
    loss = torch.zeros(len(keys), dtype=torch.float64)
    first = 0
    if start is not None:
        first = int((start.correct >= 0).sum())
        correct[:first], loss[:first] = start.correct[:first], start.loss[:first]
    correct[first:] = -1  # not scored yet
    chunks = range(first, len(keys), chunk)
    for begin in bar(chunks, enabled=progress, desc=desc, total=len(chunks), unit_scale=chunk, leave=False):
        s = score(stolen, keys[begin:begin + chunk], x, y, **launch)
        correct[begin:begin + chunk], loss[begin:begin + chunk] = s.correct, s.loss
        if done is not None:
            done(begin + len(s.correct), Scores(correct, loss, len(y)))
    return Scores(correct, loss, len(y))


def halving_schedule(num_keys: int, num_images: int, *, start_images: int = 2, eta: int = 4,
                     final_keys: int = 16) -> list[tuple[int, int]]:
    """(keys, images) per round of successive halving: round r keeps the best ``num_keys / eta**r``
    keys and scores them on ``start_images * eta**r`` images; the last round scores the survivors
    (at least ``final_keys``) on all ``num_images``."""
    for name, value in (("start_images", start_images), ("final_keys", final_keys)):
        positive(name, value)
    if not isinstance(eta, int) or eta < 2:
        raise ConfigError(f"eta must be an int >= 2, got {eta!r}")
    rounds = []
    keys, images = num_keys, min(start_images, num_images)
    while images < num_images and keys > final_keys:
        rounds.append((keys, images))
        keys, images = max(final_keys, math.ceil(keys / eta)), min(num_images, images * eta)
    rounds.append((min(keys, num_keys), num_images))
    return rounds
