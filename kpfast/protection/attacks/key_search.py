"""Attack 2, random key search (brute force; the reference's ``random_key_search``).

Threat model: the attacker holds the protected model file (weights, architecture, public chain
config; not the key) and one small labelled batch of plain images. They draw random key sets,
score each on the batch through the model and keep the best; the best is then re-scored on the
whole test set (what the key would really give them).

The reference tries 20,000 seeds one at a time (a fresh key object, a fresh transform, one model
call per key). Here every launch transforms a batch of images under many keys at once
(``key_index``) and scores them in one model call, and by default the search runs as successive
halving: every key on a few images, the best quarter on four times as many, and so on, until the
survivors are scored on the whole batch. ``strategy="exhaustive"`` scores every key on the whole
batch, as the reference does.

Candidates (``space``, :func:`~kpfast.protection.attacks.scoring.candidate_keys`): ``"tables"``
(default) draws generate()'s permutations and masks with a uniformly random FFX table each (an
ideal FFX, without deriving a table from a password in Python per key); ``"generate"`` draws
password keys; ``"seed"`` the reference's 32-bit seeds.
"""
from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...engine import checkpoint as ckpt
from ...errors import CheckpointError, ConfigError
from ...keys import KeySet
from ..evaluate import IMAGES_PER_LAUNCH, KEYS_PER_LAUNCH
from .scoring import (
    Scores,
    StolenModel,
    candidate_keys,
    check_images,
    halving_schedule,
    positive,
    rank_keys,
    take,
    used_agreement,
)

STRATEGIES = ("halving", "exhaustive")
STATE_TYPE = "attack-key-search"


@dataclass
class KeySearchResult:
    strategy: str
    space: str
    seed: int
    keys_tried: int
    batch_images: int
    rounds: list[dict[str, int]]  # {"keys", "images"} per round
    model_evaluations: int  # images pushed through the model, all rounds (keys x images)
    seconds: float  # the search (transform + model), without the re-scoring on the test set
    keys_per_second: float
    best_batch_accuracy: float
    best_test_accuracy: float
    test_images: int
    best_key_fingerprint: str
    finalists_batch_accuracy: list[float]  # the last round's keys on the whole batch, best first
    curve: list[list[float]]  # [k, best whole-batch accuracy among the first k keys] (halving: among the finalists)
    agreement: dict[str, float] | None = None  # best key vs the true key (evaluation mode)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def random_key_search(stolen: StolenModel, x: torch.Tensor, y: torch.Tensor, test_x: torch.Tensor,
                      test_y: torch.Tensor, *, num_keys: int = 20_000, batch: int = 64, strategy: str = "halving",
                      space: str = "tables", seed: int = 0, keys: Sequence[KeySet] | None = None,
                      start_images: int = 2, eta: int = 4, final_keys: int = 16,
                      keys_per_launch: int = KEYS_PER_LAUNCH, images_per_launch: int = IMAGES_PER_LAUNCH,
                      true_key: KeySet | None = None, state: str | Path | None = None,
                      progress: bool = False) -> KeySearchResult:
    """Search ``num_keys`` random keys (or the given ``keys``) on the first ``batch`` of ``x, y``.

    Args:
        stolen: the attacked model (:func:`~kpfast.protection.attacks.scoring.load_stolen`).
        x, y: the attacker's labelled images; the first ``batch`` are the search batch.
        test_x, test_y: where the best key is re-scored.
        strategy: ``"halving"`` (see :func:`~kpfast.protection.attacks.scoring.halving_schedule`:
            ``start_images``, ``eta``, ``final_keys``) or ``"exhaustive"``.
        space, seed: the candidates: ``num_keys`` keys of ``space`` from ``numpy.random.default_rng(seed)``.
        keys: candidates to use instead (e.g. with the true key among them).
        true_key: evaluation mode only: the model's key, to report how much of it the best key matches.
        state: a file to keep progress in; a search interrupted with the same settings resumes from
            it. It holds scores only (the candidates are re-drawn from ``seed``), and is removed at the end.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    check_images(stolen, x, y)
    x, y = take(batch, x, y, "batch")
    stolen.check_key(true_key, "true key")
    if keys is None:
        positive("num_keys", num_keys)
        keys = candidate_keys(num_keys, stolen.block_size, stolen.channels, np.random.default_rng(seed), space=space,
                              grid=stolen.grid)
    else:
        keys, space = list(keys), "given"
        if not keys:
            raise ConfigError("need at least one candidate key")
    schedule = (halving_schedule(len(keys), batch, start_images=start_images, eta=eta, final_keys=final_keys)
                if strategy == "halving" else [(len(keys), batch)])
    launch = {"keys_per_launch": keys_per_launch, "images_per_launch": images_per_launch}
    settings = {"strategy": strategy, "space": space, "seed": seed, "keys": len(keys), "batch": batch,
                "schedule": schedule, "key_fingerprint": stolen.key_fingerprint}
    saved = _load_state(state, settings)

    alive = torch.arange(len(keys))
    total: Scores | None = None
    first_round: Scores | None = None
    seconds = 0.0
    start_round, partial = 0, None
    if saved is not None:
        start_round, seconds = saved["round"], saved["seconds"]
        alive, partial = saved["alive"], Scores(saved["partial_correct"], saved["partial_loss"], saved["partial_images"])
        if saved["total_images"]:
            total = Scores(saved["total_correct"], saved["total_loss"], saved["total_images"])
        if saved["first_correct"] is not None:
            first_round = Scores(saved["first_correct"], saved["first_loss"], schedule[0][1])
    for r in range(start_round, len(schedule)):
        count, images = schedule[r]
        if r != start_round or saved is None:
            if total is not None:  # keep the best `count` keys of the last round
                keep = total.order()[:count]
                alive, total = alive[keep], Scores(total.correct[keep], total.loss[keep], total.images)
            partial = None
        began_images = total.images if total is not None else 0
        began = time.perf_counter()
        save = None if state is None else functools.partial(_save_progress, state, settings, r, alive, total,
                                                            first_round, seconds, began)
        new = rank_keys(stolen, [keys[i] for i in alive.tolist()], x[began_images:images], y[began_images:images],
                        start=partial, done=save, progress=progress,
                        desc=f"key search, round {r + 1}/{len(schedule)} ({len(alive)} keys x {images} images)",
                        chunk=max(keys_per_launch, 4096 // max(1, images - began_images)), **launch)
        seconds += time.perf_counter() - began
        total = new if total is None else Scores(total.correct + new.correct, total.loss + new.loss, images)
        if r == 0:
            first_round = total
    order = total.order()
    best = keys[alive[order[0]]]
    test = stolen.accuracy([best], test_x, test_y, **launch)
    evaluations = sum(k * i for k, i in _increments(schedule))
    curve = _running_best(len(keys), alive, total.accuracy)
    if state is not None:
        Path(state).unlink(missing_ok=True)
    agreement = used_agreement(best, true_key, stolen.ops)
    return KeySearchResult(
        strategy=strategy, space=space, seed=seed, keys_tried=len(keys), batch_images=batch,
        rounds=[{"keys": k, "images": i} for k, i in schedule], model_evaluations=evaluations, seconds=seconds,
        keys_per_second=len(keys) / seconds if seconds else float("inf"),
        best_batch_accuracy=float(total.accuracy[order[0]]), best_test_accuracy=float(test[0]),
        test_images=len(test_y), best_key_fingerprint=best.fingerprint(),
        finalists_batch_accuracy=total.accuracy[order].tolist(), curve=curve, agreement=agreement)


def _increments(schedule: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(keys, new images) per round: survivors are only scored on the images their round adds."""
    out, before = [], 0
    for keys, images in schedule:
        out.append((keys, images - before))
        before = images
    return out


def _running_best(count: int, alive: torch.Tensor, accuracy: torch.Tensor) -> list[list[float]]:
    """The best whole-batch accuracy among the first k keys, at about 60 log-spaced k (keys not
    scored on the whole batch, i.e. eliminated by halving, count as unknown)."""
    full = torch.full((count,), -1.0, dtype=torch.float64)
    full[alive] = accuracy
    best = torch.cummax(full, 0).values
    points = sorted({round(float(v)) for v in np.geomspace(1, count, num=min(count, 60))})
    return [[k, float(best[k - 1])] for k in points if best[k - 1] >= 0]


def _save_progress(path: str | Path, settings: dict[str, Any], r: int, alive: torch.Tensor, total: Scores | None,
                   first: Scores | None, seconds: float, began: float, done: int, partial: Scores) -> None:
    """The state of round ``r`` after ``done`` of its keys: ``partial`` holds their scores on its images."""
    seconds += time.perf_counter() - began
    ckpt.write(path, {"format": ckpt.FORMAT, "version": ckpt.VERSION, "type": STATE_TYPE, "run": settings,
                      "round": r, "alive": alive, "seconds": seconds,
                      "total_correct": None if total is None else total.correct,
                      "total_loss": None if total is None else total.loss,
                      "total_images": 0 if total is None else total.images,
                      "partial_correct": partial.correct, "partial_loss": partial.loss, "partial_images": partial.images,
                      "first_correct": None if first is None else first.correct,
                      "first_loss": None if first is None else first.loss})


def _load_state(path: str | Path | None, settings: dict[str, Any]) -> dict[str, Any] | None:
    if path is None or not Path(path).exists():
        return None
    saved = ckpt.load(path, STATE_TYPE)
    saved_settings = dict(saved["run"])
    saved_settings["schedule"] = [tuple(s) for s in saved_settings["schedule"]]
    if saved_settings != settings:
        raise CheckpointError(f"cannot resume the key search in {path}: it was started with other settings; "
                              "delete it or use another output folder")
    return saved
