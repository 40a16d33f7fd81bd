"""Attack 3, heuristic key estimation (the reference's ``heuristic_key_search``).

Threat model: the attacker holds the protected model file (not the key) and one small labelled
batch of plain images. Starting from a random key they edit it one step at a time and keep an
edit when the batch accuracy does not drop: for the permutation every swap (i, j), for each mask
every bit flip, and for block scrambling every swap of two block locations, over several passes.
The accuracy on the whole test set after every pass says what the estimate is worth; in
evaluation mode (the true key given) so do the fractions of permutation positions and mask bits
it got right.

Candidates are scored in batches: the edits of one step (as many as one model call holds,
``images_per_launch // batch``, or ``// screen`` when screening; at most ``keys_per_launch``) are
all made to the current key and scored at once (with ``screen``, first on a few images, then only
the most promising on the whole batch). The best of them is kept if it does not lower the score; when several improve
it and touch different positions, they are also tried together and kept together if that is
at least as good (one more scoring). ``criterion="accuracy"`` compares batch accuracy alone (as
the reference; ties are kept, so the key drifts on plateaus); the default ``"accuracy+loss"``
breaks ties by the batch's mean cross-entropy, which sees changes that no prediction shows yet.
The FFX table cannot be searched this way (2^128 passwords, no neighbourhood): the estimate keeps
the random start's table.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...engine import checkpoint as ckpt
from ...errors import CheckpointError, ConfigError
from ...keys import KeySet
from ...report.progress import bar
from ..evaluate import IMAGES_PER_LAUNCH, KEYS_PER_LAUNCH
from .scoring import (
    Scores,
    StolenModel,
    check_images,
    positive,
    score,
    take,
    used_agreement,
)

CRITERIA = ("accuracy+loss", "accuracy")
STATE_TYPE = "attack-key-estimate"

Edit = tuple[str, int, int]  # ("swap", i, j) | ("negpos", l, -1) | ("ffx", l, -1) | ("block_swap", a, b)
SWAPS = {"swap": ("shuffle", "perm"), "block_swap": ("scramble", "block_perm")}  # edit: (op, key part)


@dataclass
class KeyEstimateResult:
    criterion: str
    seed: int
    batch_images: int
    screen_images: int  # 0: every edit scored on the whole batch
    test_images: int
    start_batch_accuracy: float
    start_test_accuracy: float
    passes: list[dict[str, Any]]  # per pass: batch/test accuracy, edits kept, candidates, seconds, agreement
    model_evaluations: int  # images pushed through the model (candidates x batch, all passes)
    seconds: float
    final_key_fingerprint: str
    start_agreement: dict[str, float] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def final_test_accuracy(self) -> float:
        return self.passes[-1]["test_accuracy"] if self.passes else self.start_test_accuracy

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["final_test_accuracy"] = self.final_test_accuracy
        return d


def edits(ops: tuple[str, ...], positions: int, blocks: int = 0) -> Iterator[Edit]:
    """Every edit of one pass, in the reference's order: swaps (i < j), then NP and FFX flips;
    with ``"scramble"``, then the swaps of two of the ``blocks`` block locations (a < b)."""
    if "shuffle" in ops:
        yield from (("swap", i, j) for i in range(positions) for j in range(i + 1, positions))
    for op in ("negpos", "ffx"):
        if op in ops:
            yield from ((op, l, -1) for l in range(positions))
    if "scramble" in ops:
        yield from (("block_swap", a, b) for a in range(blocks) for b in range(a + 1, blocks))


def apply(keys: KeySet, edit: Edit) -> KeySet:
    kind, i, j = edit
    return keys.swap(i, j, SWAPS[kind][0]) if kind in SWAPS else keys.flip(kind, i)


def _positions(edit: Edit) -> set[tuple[str, int]]:
    kind, i, j = edit
    return {(SWAPS[kind][1], i), (SWAPS[kind][1], j)} if kind in SWAPS else {(kind, i)}


def estimate_key(stolen: StolenModel, x: torch.Tensor, y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 *, batch: int = 128, passes: int = 3, seed: int = 0, start: KeySet | None = None,
                 criterion: str = "accuracy+loss", screen: int = 0, screen_keep: int = 8,
                 keys_per_launch: int = KEYS_PER_LAUNCH,
                 images_per_launch: int = IMAGES_PER_LAUNCH, true_key: KeySet | None = None,
                 state: str | Path | None = None, progress: bool = False) -> KeyEstimateResult:
    """Estimate the key of ``stolen`` from the first ``batch`` labelled images of ``x, y``.

    Args:
        passes: passes over all edits.
        seed, start: the random start key (``KeySet.generate`` from ``numpy.random.default_rng(seed)``),
            or the given one.
        criterion: ``"accuracy+loss"`` or ``"accuracy"`` (see the module docs).
        screen, screen_keep: with ``screen`` > 0, the edits of a launch are first scored on the first
            ``screen`` images of the batch and only the best ``screen_keep`` on the rest (0: every
            edit on the whole batch, as the reference).
        true_key: evaluation mode only: the model's key, to report what the estimate recovered.
        state: a file to resume from after every pass (with ``<state>.key`` beside it, mode 0600,
            holding the current estimate); both are removed at the end.
    """
    if criterion not in CRITERIA:
        raise ConfigError(f"criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    positive("passes", passes)
    if not isinstance(screen, int) or not 0 <= screen < batch:
        raise ConfigError(f"screen must be an int in [0, batch = {batch}), got {screen!r}")
    positive("screen_keep", screen_keep)
    check_images(stolen, x, y)
    xb, yb = take(batch, x, y, "batch")
    stolen.check_key(true_key, "true key")
    launch = {"keys_per_launch": keys_per_launch, "images_per_launch": images_per_launch}
    start_key = start if start is not None else KeySet.generate(stolen.block_size, stolen.channels, grid=stolen.grid,
                                                                rng=np.random.default_rng(seed))
    current = start_key
    settings = {"criterion": criterion, "seed": seed, "batch": batch, "passes": passes,
                "start": start_key.fingerprint(), "key_fingerprint": stolen.key_fingerprint}
    if screen:
        settings.update(screen=screen, screen_keep=screen_keep)

    def agreement(keys: KeySet) -> dict[str, float] | None:
        return used_agreement(keys, true_key, stolen.ops)

    def test_accuracy(keys: KeySet) -> float:
        return float(stolen.accuracy([keys], test_x, test_y, **launch)[0])

    saved = _load_state(state, settings)
    if saved is not None:
        history, seconds, evaluations = saved["passes"], saved["seconds"], saved["evaluations"]
        start_test = saved["start_test_accuracy"]
        start_batch = saved["start_batch_accuracy"]
        current = KeySet.load(_key_path(state))
    else:
        history, seconds, evaluations = [], 0.0, 0
        start_test, start_batch = test_accuracy(current), None
    now = score(stolen, [current], xb, yb, **launch)
    start_batch = float(now.accuracy[0]) if start_batch is None else start_batch
    blocks = 0 if stolen.grid is None else stolen.grid[0] * stolen.grid[1]
    all_edits = list(edits(stolen.ops, stolen.num_positions, blocks))
    # A step scores as many edits as one model call holds: smaller steps cost no more model
    # evaluations and keep more edits per pass (the reference keeps or drops edits one at a time).
    chunk = max(1, min(keys_per_launch, images_per_launch // (screen or len(yb))))

    for p in range(len(history), passes):
        began, kept, tried = time.perf_counter(), 0, 0
        chunks = range(0, len(all_edits), chunk)
        for begin in bar(chunks, enabled=progress, total=len(chunks), leave=False,
                         desc=f"key estimation, pass {p + 1}/{passes} ({len(all_edits)} edits)"):
            launch_edits = all_edits[begin:begin + chunk]
            group, candidates, scores, images = _score_edits(stolen, current, launch_edits, xb, yb, screen,
                                                             screen_keep, launch)
            best, decided = _choose(stolen, current, now, group, candidates, scores, xb, yb, criterion, launch)
            tried, evaluations = tried + len(launch_edits), evaluations + images + decided
            if best is not None:
                current, now, kept = best[0], best[1], kept + best[2]
        seconds += time.perf_counter() - began
        history.append({"pass": p + 1, "batch_accuracy": float(now.accuracy[0]), "test_accuracy": test_accuracy(current),
                        "edits_kept": kept, "candidates": tried, "seconds": time.perf_counter() - began,
                        "agreement": agreement(current)})
        if state is not None and p + 1 < passes:
            _save_state(state, settings, current, history, seconds, evaluations, start_test, start_batch)
    if state is not None:
        Path(state).unlink(missing_ok=True)
        _key_path(state).unlink(missing_ok=True)
    return KeyEstimateResult(criterion=criterion, seed=seed, batch_images=len(yb), screen_images=screen,
                             test_images=len(test_y),
                             start_batch_accuracy=start_batch, start_test_accuracy=start_test, passes=history,
                             model_evaluations=evaluations, seconds=seconds,
                             final_key_fingerprint=current.fingerprint(), start_agreement=agreement(start_key))


def _score_edits(stolen: StolenModel, current: KeySet, group: list[Edit], xb: torch.Tensor, yb: torch.Tensor,
                 screen: int, keep: int, launch: dict[str, int]) -> tuple[list[Edit], list[KeySet], Scores, int]:
    """The edits of one launch made to ``current`` and scored on the batch; with ``screen``, all on
    the first ``screen`` images and the best ``keep`` on the rest (only those are returned). Also
    returns the number of images scored."""
    candidates = [apply(current, e) for e in group]
    if not screen:
        return group, candidates, score(stolen, candidates, xb, yb, **launch), len(candidates) * len(yb)
    first = score(stolen, candidates, xb[:screen], yb[:screen], **launch)
    top = first.order()[:keep].tolist()
    rest = score(stolen, [candidates[i] for i in top], xb[screen:], yb[screen:], **launch)
    scores = Scores(first.correct[top] + rest.correct, first.loss[top] + rest.loss, len(yb))
    return ([group[i] for i in top], [candidates[i] for i in top], scores,
            len(candidates) * screen + len(top) * (len(yb) - screen))


def _choose(stolen: StolenModel, current: KeySet, now: Scores, group: list[Edit], candidates: list[KeySet],
            scores: Scores, xb: torch.Tensor, yb: torch.Tensor, criterion: str, launch: dict[str, int]
            ) -> tuple[tuple[KeySet, Scores, int] | None, int]:
    """The edit to keep (key, its scores, edits it makes) or None, and the images scored to decide:
    the best candidate if it does not lower the score; the improving edits on distinct positions
    together instead when they score at least as well."""
    order = scores.order().tolist()
    best = order[0]
    choice = None
    if _compare(scores, best, now, 0, criterion) >= 0:
        choice = (candidates[best], _pick(scores, best), 1)
    combined, used, n = current, set(), 0
    for i in order:
        if _compare(scores, i, now, 0, criterion) > 0 and not _positions(group[i]) & used:
            combined, n = apply(combined, group[i]), n + 1
            used |= _positions(group[i])
    if n < 2:
        return choice, 0
    together = score(stolen, [combined], xb, yb, **launch)
    if _compare(together, 0, scores, best, criterion) >= 0:
        choice = (combined, together, n)
    return choice, len(yb)


def _pick(s: Scores, i: int) -> Scores:
    return Scores(s.correct[i:i + 1], s.loss[i:i + 1], s.images)


def _compare(a: Scores, i: int, b: Scores, j: int, criterion: str) -> int:
    """+1 if key i of `a` scores better than key j of `b`, 0 if as well, -1 if worse."""
    if a.correct[i] != b.correct[j]:
        return 1 if a.correct[i] > b.correct[j] else -1
    if criterion == "accuracy" or a.loss[i] == b.loss[j]:
        return 0
    return 1 if a.loss[i] < b.loss[j] else -1


def _key_path(state: str | Path) -> Path:
    return Path(f"{state}.key")


def _save_state(path: str | Path, settings: dict[str, Any], current: KeySet, history: list[dict[str, Any]],
                seconds: float, evaluations: int, start_test: float, start_batch: float) -> None:
    current.save(_key_path(path), overwrite=True)  # owner-only: an estimate may be close to the secret
    ckpt.write(path, {"format": ckpt.FORMAT, "version": ckpt.VERSION, "type": STATE_TYPE, "run": settings,
                      "passes": history, "seconds": seconds, "evaluations": evaluations,
                      "start_test_accuracy": start_test, "start_batch_accuracy": start_batch})


def _load_state(path: str | Path | None, settings: dict[str, Any]) -> dict[str, Any] | None:
    if path is None or not Path(path).exists():
        return None
    saved = ckpt.load(path, STATE_TYPE)
    if saved["run"] != settings or not _key_path(path).exists():
        raise CheckpointError(f"cannot resume the key estimation in {path}: it was started with other settings "
                              "(or its key file is gone); delete it or use another output folder")
    return saved
