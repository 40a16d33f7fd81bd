"""The whole evaluation of a protected model in one resumable run: what ``kpfast audit`` and
``kpfast attack`` do.

Stages (each one file ``<out>/<stage>.json`` when done; a re-run with the same settings skips it,
one with other settings is refused):

* ``protection``: accuracy with the correct key, R wrong keys and plain images
  (:func:`~kpfast.protection.evaluate.evaluate_protection`; needs the key);
* ``key-space``, ``key-search``, ``key-estimate``, ``finetune``: the attacks, which never see the key
  (given one, they also report how much of it they recovered);
* ``known-plaintext``: needs the key to make the (plain, protected) pairs the attacker holds.

The attacker's labelled images come from the training split (a random sample from ``seed``), the
scores from the test split. ``report.md``, ``report.json`` and the plots are rewritten after every
stage. Nothing written holds key material except ``<stage>.state.key`` (mode 0600) while an
estimation is unfinished.
"""
from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...atomic import write_json, write_text
from ...data import ImageSet, load_dataset
from ...engine.device import device_name
from ...engine.ranks import Ranks
from ...errors import CheckpointError, ConfigError
from ...keys import KeySet
from ..evaluate import KEYS_PER_LAUNCH, evaluate_protection
from . import report
from .finetune import finetune_attack, sizes_from_fractions
from .key_estimate import estimate_key
from .key_search import random_key_search
from .keyspace import key_space
from . import known_plaintext
from .known_plaintext import known_plaintext_sweep
from .scoring import StolenModel, check_images, load_stolen, sample

STAGES = ("protection", "key-space", "key-search", "key-estimate", "finetune", "known-plaintext")
NEEDS_KEY = ("protection", "known-plaintext")


@dataclass(frozen=True)
class Budget:
    """How much each attack may spend. ``quick`` is sized for a small CNN on a CPU (tens of
    minutes on 2 cores), ``full`` is the reference's scale (for a GPU)."""

    test_images: int | None = 2000  # None: the whole test split
    wrong_keys: int = 10
    search_keys: int = 2000
    search_batch: int = 64
    search_strategies: tuple[str, ...] = ("halving",)
    search_space: str = "tables"
    estimate_passes: int = 2
    estimate_batch: int = 64
    estimate_criterion: str = "accuracy+loss"
    estimate_screen: int = 0  # images of the first look at each launch of edits (0: none)
    finetune_fractions: tuple[float, ...] = (0.01, 0.1)
    finetune_steps: int = 100
    finetune_batch: int = 64
    finetune_lr: float = 0.05
    pairs: tuple[int, ...] = (1, 2, 4, 8)
    keys_per_launch: int = KEYS_PER_LAUNCH
    # A small CNN on a CPU scores an image about 1.7x faster in launches of 256 images than of 1024
    # (the activations stay in cache; benchmarks/results/attack-speed.md); a GPU wants more.
    images_per_launch: int = 256

    def as_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


BUDGETS = {
    "quick": Budget(),
    "full": Budget(test_images=None, search_keys=20_000, search_batch=128, search_strategies=("halving", "exhaustive"),
                   estimate_passes=10, estimate_batch=128, finetune_steps=1000, finetune_batch=128,
                   images_per_launch=8192),
}


@dataclass
class Audit:
    """One audit's inputs: the stolen model, the key (None for attacks alone), the data, where to write."""

    stolen: StolenModel
    key: KeySet | None
    train_set: ImageSet
    test_set: ImageSet
    out: Path
    budget: Budget
    seed: int = 0
    budget_name: str = "custom"
    model_path: str = ""
    data: str = ""
    cache: Path | None = None
    progress: bool = False
    log: Callable[[str], None] = print


def prepare(model: str | Path, key: str | Path | None, data: str, data_root: str | None, out: str | Path, *,
            budget: Budget, budget_name: str = "custom", seed: int = 0, device: str | torch.device = "cpu",
            cache: str | Path | None = None, progress: bool = False, log: Callable[[str], None] = print) -> Audit:
    """Load the model as an attacker sees it, the key (if given: for evaluation only) and the data."""
    stolen = load_stolen(model, device)
    keys = KeySet.load(key) if key is not None else None
    stolen.check_key(keys, f"key {key}")
    train_set, test_set = load_dataset(data, data_root, progress=progress)
    for part, images in (("training", train_set), ("test", test_set)):
        check_images(stolen, images.images, images.labels, f"{part} images of {data}")
    if budget.test_images is not None:
        test_set = test_set.first_per_class(budget.test_images)
    return Audit(stolen, keys, train_set, test_set.to(stolen.device), Path(out), budget, seed, budget_name,
                 str(model), data, Path(cache) if cache is not None else None, progress, log)


def attacker_batch(audit: Audit, n: int, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The attacker's n labelled images: a random sample of the training split (from the seed)."""
    images = sample(audit.train_set, n, audit.seed, what).to(audit.stolen.device)
    return images.images, images.labels


# --- stages -------------------------------------------------------------------------------------


def _settings(audit: Audit, stage: str) -> dict[str, Any]:
    """What makes a stage's result: a finished stage is reused only under the same settings."""
    b = audit.budget
    per_stage = {
        "protection": {"wrong_keys": b.wrong_keys},
        "key-space": {},
        "key-search": {"keys": b.search_keys, "batch": b.search_batch, "strategies": list(b.search_strategies),
                       "space": b.search_space},
        "key-estimate": {"passes": b.estimate_passes, "batch": b.estimate_batch, "criterion": b.estimate_criterion,
                         **({"screen": b.estimate_screen} if b.estimate_screen else {})},
        "finetune": {"fractions": list(b.finetune_fractions), "steps": b.finetune_steps, "batch": b.finetune_batch,
                     "lr": b.finetune_lr},
        "known-plaintext": {"pairs": list(b.pairs)},
    }[stage]
    return {"model_key": audit.stolen.key_fingerprint, "data": audit.data, "test_images": len(audit.test_set),
            "train_images": len(audit.train_set), "seed": audit.seed, "evaluation_mode": audit.key is not None,
            **per_stage}


def _run_stage(audit: Audit, stage: str) -> dict[str, Any]:
    b, s, key = audit.budget, audit.stolen, audit.key
    test_x, test_y = audit.test_set.images, audit.test_set.labels
    launch = {"keys_per_launch": b.keys_per_launch, "images_per_launch": b.images_per_launch}
    state = audit.out / f"{stage}.state"
    if stage in NEEDS_KEY and key is None:
        raise ConfigError(f"the {stage} stage needs the model's key (--key FILE)")
    if stage == "protection":
        return evaluate_protection(s.network, s.transform, key, audit.test_set, wrong_keys=b.wrong_keys,
                                   seed=audit.seed, device=s.device, keys_per_launch=b.keys_per_launch)
    if stage == "key-space":
        return key_space(s.ops, s.block_size, s.channels, grid=s.grid).as_dict()
    if stage == "key-search":
        x, y = attacker_batch(audit, b.search_batch, "the key search batch")
        searches = [random_key_search(s, x, y, test_x, test_y, num_keys=b.search_keys, batch=b.search_batch,
                                      strategy=strategy, space=b.search_space, seed=audit.seed, true_key=key,
                                      state=Path(f"{state}-{strategy}"), progress=audit.progress, **launch).as_dict()
                    for strategy in b.search_strategies]
        return {"searches": searches}
    if stage == "key-estimate":
        x, y = attacker_batch(audit, b.estimate_batch, "the key estimation batch")
        return estimate_key(s, x, y, test_x, test_y, batch=b.estimate_batch, passes=b.estimate_passes,
                            seed=audit.seed, criterion=b.estimate_criterion, screen=b.estimate_screen,
                            true_key=key, state=state,
                            progress=audit.progress, **launch).as_dict()
    if stage == "finetune":
        sizes = sizes_from_fractions(b.finetune_fractions, len(audit.train_set))
        return finetune_attack(s, audit.train_set, audit.test_set, sizes=sizes, steps=b.finetune_steps,
                               batch_size=b.finetune_batch, lr=b.finetune_lr, seed=audit.seed,
                               out=audit.out / "finetune", cache=audit.cache, progress=audit.progress).as_dict()
    if stage == "known-plaintext":
        plain, _ = attacker_batch(audit, max(b.pairs), "the known pairs")
        with torch.inference_mode():
            protected = s.transform(key)(plain)
        results = known_plaintext_sweep(s, plain, protected, test_x, test_y, pairs=b.pairs, seed=audit.seed,
                                        true_key=key)
        return {"results": [r.as_dict() for r in results]}
    raise ConfigError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")


def run_stage(audit: Audit, stage: str) -> dict[str, Any]:
    """The stage's record: loaded when it is done under the same settings, else run and written."""
    audit.out.mkdir(parents=True, exist_ok=True)
    path = audit.out / f"{stage}.json"
    settings = _settings(audit, stage)
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("settings") != settings:
            changed = ", ".join(f"{k}: {saved.get('settings', {}).get(k)!r} -> {v!r}" for k, v in settings.items()
                                if saved.get("settings", {}).get(k) != v)
            raise CheckpointError(f"{path} holds a result of other settings ({changed}); use another --out")
        audit.log(f"{stage}: done before ({path})")
        return saved["result"]
    audit.log(f"{stage}: running")
    began = time.perf_counter()
    result = _run_stage(audit, stage)
    ranks = Ranks.current()  # a data-parallel stage (finetune under torchrun): rank 0 writes
    if ranks.is_main:
        write_json(path, {"settings": settings, "seconds": time.perf_counter() - began, "result": result})
        (audit.out / f"{stage}.png").unlink(missing_ok=True)  # drawn again by the next report
    ranks.barrier()
    return result


def load_records(out: Path) -> dict[str, dict[str, Any]]:
    """The finished stages in ``out``."""
    records = {}
    for stage in STAGES:
        path = out / f"{stage}.json"
        if path.exists():
            records[stage] = json.loads(path.read_text())["result"]
    return records


def meta(audit: Audit) -> dict[str, Any]:
    s = audit.stolen
    return {"model": audit.model_path, "arch": s.arch, "ops": list(s.ops), "block_size": s.block_size,
            "channels": s.channels, "key_fingerprint": s.key_fingerprint, "data": audit.data,
            "train_images": len(audit.train_set), "test_images": len(audit.test_set),
            "device": device_name(s.device), "budget": audit.budget_name, "budget_settings": audit.budget.as_dict(),
            "seed": audit.seed}


def write_report(audit: Audit) -> Path:
    """report.md and report.json from the finished stages in the out folder, with one PNG per attack
    (each drawn once, when its stage is done)."""
    records = load_records(audit.out)
    info = meta(audit)
    names = []
    for stage, record in records.items():
        path = audit.out / f"{stage}.png"
        if not path.exists() and report.plot(stage, record, path, records.get("protection")) is None:
            continue
        names.append(path.name)
    info["plots"] = names
    info["verdicts"] = report.verdicts(records)
    write_json(audit.out / "report.json", {"meta": info, "results": records})
    write_text(audit.out / "report.md", report.audit_markdown(info, records))
    return audit.out / "report.md"


def run_audit(audit: Audit, stages: Sequence[str] = STAGES) -> dict[str, dict[str, Any]]:
    """Run (or resume) ``stages``; the report is rewritten after each."""
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"unknown stage(s) {', '.join(unknown)}; expected some of {', '.join(STAGES)}")
    for stage in stages:
        if stage == "known-plaintext" and not known_plaintext.covers(audit.stolen.ops):
            audit.log(f"{stage}: skipped: {known_plaintext.SCRAMBLE_NOT_COVERED}")
            continue
        run_stage(audit, stage)
        write_report(audit)
    return load_records(audit.out)
