"""The reproduction grid: a plain model and Shuffle / NP / FFX at block sizes 2, 4, 8 and 16.

Each cell trains one model (its own fresh key), then measures accuracy with the correct key,
with random wrong keys and on plain images, and the training time against the plain model.
The out folder is resumable per model:

    cells/<cell>.json        a finished cell's record (kept, and skipped on re-run)
    checkpoints/<cell>/      an unfinished cell's training checkpoint (removed when it finishes)
    keys/<cell>.key          its key (mode 0600; never copied into any result)
    results.json, results.md, accuracy_vs_block_size.png   rewritten after every model

Under torchrun every rank trains each cell (data-parallel); rank 0 evaluates it and writes
every file, and decides from its view of the out folder which cells are left.
"""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..atomic import write_json, write_text
from ..data import DeviceLoader, ImageSet
from ..engine.classifier import DEFAULTS, TrainResult
from ..engine.device import device_name
from ..engine.ranks import Ranks
from ..errors import CheckpointError, ConfigError
from ..normalize import Normalize
from ..plan import IN_BLOCK_TRANSFORMS
from ..report.tables import TRANSFORM_LABELS, duration, markdown_table, percent, plural
from ..keys import KeySet
from . import experiment
from .model import ProtectedModel

BLOCK_SIZES = (4, 2, 8, 16)  # M = 4 first: the setting both papers headline

# AprilPyone & Kiya's ResNet-18 on CIFAR-10, correct key, % (docs/semantics.md, section 7).
PUBLISHED_EPOCHS = 200
PUBLISHED_PLAIN = 95.43
PUBLISHED = {
    "shuffle": {2: 94.77, 4: 92.56, 8: 86.40, 16: 77.25},
    "negpos": {2: 95.32, 4: 93.41, 8: 91.54, 16: 92.68},
    "ffx": {2: 93.79, 4: 92.27, 8: 91.99, 16: 91.39},
}
PUBLISHED_SETTING = ("ResNet-18, 200 epochs, batch 128, SGD (momentum 0.9, weight decay 5e-4), cyclic LR "
                     "0 -> 0.2 -> 0, mixed precision, random crop + flip, original (PNG-exact) CIFAR-10")


@dataclass(frozen=True)
class Cell:
    """One model of the grid: `op` at block size `block_size`, or the plain model (both None)."""

    op: str | None = None
    block_size: int | None = None

    @property
    def name(self) -> str:
        return "plain" if self.op is None else f"{self.op}-{self.block_size}"

    @property
    def ops(self) -> tuple[str, ...]:
        return () if self.op is None else (self.op,)


def default_cells() -> list[Cell]:
    """All 13 cells, the most informative first: plain, then M = 4, 2, 8, 16 for every transform."""
    return [Cell()] + [Cell(op, m) for m in BLOCK_SIZES for op in IN_BLOCK_TRANSFORMS]


CELLS_SYNTAX = ("a comma list of 'plain' and <transform>-<M> with transform shuffle, negpos or ffx and "
                "M a block size, e.g. 'plain,ffx-4,shuffle-4,negpos-4'; or 'all' (the 13 cells)")


def parse_cells(text: str) -> list[Cell]:
    """'plain,ffx-4,shuffle-4' -> cells in that order; 'all' -> `default_cells()`."""
    if text.strip() == "all":
        return default_cells()
    cells = []
    for item in (i.strip() for i in text.split(",")):
        op, _, m = item.rpartition("-")
        if item == "plain":
            cell = Cell()
        elif op in IN_BLOCK_TRANSFORMS and m.isdigit() and int(m) >= 1:
            cell = Cell(op, int(m))
        else:
            raise ConfigError(f"unknown cell {item!r} in --cells {text!r}: expected {CELLS_SYNTAX}")
        if cell in cells:
            raise ConfigError(f"cell {item!r} is listed twice in --cells {text!r}")
        cells.append(cell)
    return cells


# --- one cell ------------------------------------------------------------------------------


def time_transform(transform: nn.Module, x: torch.Tensor, repeats: int = 10) -> float:
    """Median seconds of the transform alone on one training batch (the GPU is synchronised)."""
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):
            sync()
            start = time.perf_counter()
            transform(x)
            sync()
            if i:  # the first call warms up
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_cell(cell: Cell, base: experiment.RunConfig, out: Path, train_set: ImageSet, test_set: ImageSet,
             loader: DeviceLoader, *, wrong_keys: int, save_model: bool = False,
             progress: bool = True, sync_batchnorm: bool = False) -> dict[str, Any]:
    """Train, evaluate and time one cell; returns its record (no key material in it). In a
    distributed job every rank trains, rank 0 evaluates, and every rank gets the record."""
    config = dataclasses.replace(base, ops=cell.ops, block_size=cell.block_size or base.block_size)
    checkpoints = out / "checkpoints" / cell.name
    ranks = Ranks.current()
    keys = None
    if cell.ops:
        key_path = out / "keys" / f"{cell.name}.key"

        def check_key() -> None:
            if (checkpoints / "last.pt").exists() and not key_path.exists():
                raise CheckpointError(f"cannot resume {checkpoints}: its key {key_path} is gone; delete the "
                                      "checkpoint to train this cell again with a fresh key")

        ranks.from_main(check_key)
        keys, _ = experiment.load_or_create_key(key_path, config.block_size, train_set.images.shape[1])

    protected, history = experiment.train_run(config, train_set, keys, checkpoint_dir=checkpoints, resume=True,
                                              loader=loader, progress=progress, sync_batchnorm=sync_batchnorm)
    return ranks.from_main(lambda: _finish_cell(cell, config, out, protected, keys, history, train_set, test_set,
                                                loader, wrong_keys=wrong_keys, save_model=save_model))


def _finish_cell(cell: Cell, config: experiment.RunConfig, out: Path, protected: ProtectedModel,
                 keys: KeySet | None, history: TrainResult, train_set: ImageSet, test_set: ImageSet,
                 loader: DeviceLoader, *, wrong_keys: int, save_model: bool) -> dict[str, Any]:
    """Evaluate and time a trained cell, and save its model if asked: its record."""
    started = time.perf_counter()
    evaluation = experiment.evaluate_model(protected, keys, test_set, wrong_keys=wrong_keys, device=config.device)
    eval_seconds = time.perf_counter() - started
    if save_model:
        (out / "models").mkdir(exist_ok=True)
        protected.save(out / "models" / f"{cell.name}.pt")

    epoch_seconds = experiment.seconds_per_epoch(history.seconds)
    transform_seconds = time_transform(protected.transform, loader.images[: loader.local_batch_size])  # one rank's step
    keyed = keys is not None
    wrong = evaluation["wrong_keys"] if keyed else None
    return {
        "cell": cell.name,
        "ops": list(cell.ops),
        "block_size": cell.block_size,
        "key_fingerprint": evaluation["key_fingerprint"],
        "device": device_name(config.device),
        "train_images": len(train_set),
        "test_images": len(test_set),
        "chance": evaluation["chance"],
        "accuracy": evaluation["correct_key" if keyed else "plain_images"]["accuracy"],
        "wrong_keys": {k: wrong[k] for k in ("count", "mean", "min", "max")} if keyed else None,
        "plain_images_accuracy": evaluation["plain_images"]["accuracy"],
        "seconds_per_epoch": epoch_seconds,
        "epoch_seconds": history.seconds,
        "train_seconds": sum(history.seconds),
        "eval_seconds": eval_seconds,
        # The transform's own share of a training step (a step = an epoch over its batches).
        "transform_seconds_per_batch": transform_seconds,
        "transform_share_of_step": transform_seconds / (epoch_seconds / len(loader)),
        "evaluation": evaluation,
    }


# --- the grid ------------------------------------------------------------------------------


def grid_settings(base: experiment.RunConfig, wrong_keys: int) -> dict[str, Any]:
    """What makes results comparable: a finished cell is reused only under the same settings.
    The device is left out on purpose (a run may resume on another machine; each record names its own)."""
    d = base.as_dict()
    for k in ("ops", "block_size", "device", "compile", "data_root", "image_size"):
        d.pop(k)
    return {**d, "wrong_keys": wrong_keys}


def run_grid(base: experiment.RunConfig, cells: list[Cell], out: str | Path, *, wrong_keys: int = 10,
             save_models: bool = False, progress: bool = True, log: Callable[[str], None] = print,
             sync_batchnorm: bool = False) -> list[dict[str, Any]]:
    """Run (or resume) `cells` into `out`; returns the records of every finished cell in `out`."""
    if wrong_keys < 1:
        raise ConfigError(f"wrong_keys must be at least 1, got {wrong_keys}")
    out = Path(out)
    ranks = Ranks.current()
    log = log if ranks.is_main else (lambda _: None)
    settings = grid_settings(base, wrong_keys)
    todo = ranks.from_main(lambda: _cells_to_do(out, cells, settings))  # creates nothing: a bad run leaves no folder
    for cell in cells:
        if cell not in todo:
            log(f"skipping {cell.name}: finished ({out / 'cells' / (cell.name + '.json')})")
    if todo:
        train_set, test_set = ranks.main_first(lambda: experiment.load_data(base, progress=progress and ranks.is_main))
        for cell in todo:
            if cell.block_size is not None:
                experiment.check_block_size(train_set, cell.block_size)
        ranks.from_main(lambda: _prepare(out))
        log(f"data: {base.data}, {len(train_set)} train / {len(test_set)} test images; model {base.model}, "
            f"{plural(base.epochs, 'epoch')}, batch {base.batch_size}; {device_name(base.device)}")
        loader = experiment.make_loader(base, train_set)  # shared: each run sets its own epochs
        if torch.device(base.device).type == "cpu" and not ranks.distributed and isinstance(train_set, ImageSet):
            for line in cpu_estimate(base, train_set, len(test_set), len(todo), wrong_keys):
                log(line)
        test_set = test_set.to(base.device)
        for i, cell in enumerate(todo, 1):
            log(f"[{i}/{len(todo)}] {cell.name}")
            record = run_cell(cell, base, out, train_set, test_set, loader, wrong_keys=wrong_keys,
                              save_model=save_models, progress=progress, sync_batchnorm=sync_batchnorm)
            record["settings"] = settings
            ranks.from_main(lambda: _keep_record(out, cell, record))
            log(_summary(record))
    return ranks.from_main(lambda: _finish_grid(out))


def _cells_to_do(out: Path, cells: list[Cell], settings: dict[str, Any]) -> list[Cell]:
    """The cells without a record in `out` (which may not exist yet), refusing records of other settings."""
    for cell in cells:  # refuse mixed settings before spending any time
        record = _load_record(out, cell)
        if record is not None and record["settings"] != settings:
            changed = ", ".join(f"{k}: {record['settings'].get(k)!r} -> {v!r}" for k, v in settings.items()
                                if record["settings"].get(k) != v)
            raise CheckpointError(f"{out} holds results of other settings ({changed}); use another --out")
    return [c for c in cells if _load_record(out, c) is None]


def _prepare(out: Path) -> None:
    """The folders of a grid, made once the cells are known to fit the data."""
    (out / "cells").mkdir(parents=True, exist_ok=True)
    (out / "keys").mkdir(exist_ok=True)
    (out / "keys").chmod(0o700)


def _keep_record(out: Path, cell: Cell, record: dict[str, Any]) -> None:
    write_json(out / "cells" / f"{cell.name}.json", record)
    shutil.rmtree(out / "checkpoints" / cell.name, ignore_errors=True)  # the record replaces it
    write_report(out)


def _finish_grid(out: Path) -> list[dict[str, Any]]:
    write_report(out)
    if (out / "checkpoints").is_dir() and not any((out / "checkpoints").iterdir()):
        (out / "checkpoints").rmdir()  # every cell finished: nothing left to resume
    return _records(out)


def _load_record(out: Path, cell: Cell) -> dict[str, Any] | None:
    try:
        return json.loads((out / "cells" / f"{cell.name}.json").read_text())
    except FileNotFoundError:
        return None


def _records(out: Path) -> list[dict[str, Any]]:
    """Every finished cell in `out`, in grid order (plain, then by transform and block size)."""
    records = [json.loads(p.read_text()) for p in (out / "cells").glob("*.json")]
    order = {op: i for i, op in enumerate(IN_BLOCK_TRANSFORMS)}
    return sorted(records, key=lambda r: (bool(r["ops"]), order.get(r["ops"][0], 9) if r["ops"] else 0,
                                          r["block_size"] or 0))


def _summary(r: dict[str, Any]) -> str:
    line = f"{r['cell']}: accuracy {percent(r['accuracy'])}"
    if r["wrong_keys"]:
        line += (f", wrong keys mean {percent(r['wrong_keys']['mean'])} (max {percent(r['wrong_keys']['max'])}),"
                 f" plain images {percent(r['plain_images_accuracy'])}")
    return line + f"; {r['seconds_per_epoch']:.1f} s/epoch, {duration(r['train_seconds'] + r['eval_seconds'])}"


# --- how long a run on a CPU takes ---------------------------------------------------------

# A run that fits a CPU in minutes: the small CNN, a subset of CIFAR-10, the four M = 4 cells.
CPU_BUDGET = {"model": "small_cnn", "epochs": 5, "train_subset": 10000, "test_subset": 2000}
CPU_BUDGET_CELLS = "plain,shuffle-4,negpos-4,ffx-4"
LONG_RUN = 3600.0  # seconds; a CPU run estimated longer than this gets the budget suggested


def step_seconds(config: experiment.RunConfig, train_set: ImageSet, repeats: int = 2) -> tuple[float, float]:
    """(training step, forward pass) seconds of `config`'s model on one batch of `train_set`:
    the median of `repeats` after a warm-up. The model and optimizer are throwaways; the global
    RNG is reseeded by every run, so measuring changes no result."""
    model = experiment.build_model(config, train_set).to(config.device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    normalize = Normalize((0.5,) * train_set.images.shape[1], (0.25,) * train_set.images.shape[1]).to(config.device)
    x = normalize(train_set.images[: config.batch_size].to(config.device))
    y = train_set.labels[: config.batch_size].to(config.device)

    def train_step() -> None:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def forward() -> None:
        with torch.no_grad():
            model(x)

    def median_seconds(run: Callable[[], None]) -> float:
        times = []
        for i in range(repeats + 1):
            start = time.perf_counter()
            run()
            if i:  # the first call warms up
                times.append(time.perf_counter() - start)
        return statistics.median(times)

    return median_seconds(train_step), median_seconds(forward)


def run_seconds(config: experiment.RunConfig, train_images: int, test_images: int, cells: int, wrong_keys: int,
                step: float, forward: float) -> float:
    """A grid's training and evaluation time from one batch's step and forward times: every cell
    trains `epochs` epochs and runs the test set once with the correct key, once per wrong key and
    once on plain images."""
    batches = math.ceil(train_images / config.batch_size)
    evaluation = (wrong_keys + 2) * test_images / config.batch_size * forward
    return cells * (config.epochs * batches * step + evaluation)


def rough_duration(seconds: float) -> str:
    """'40 s', '25 min', '3.5 h', '2.1 days': how long, to the precision an estimate has."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def cpu_estimate(base: experiment.RunConfig, train_set: ImageSet, test_images: int, cells: int,
                 wrong_keys: int) -> list[str]:
    """What a grid on this CPU will take, from its first batches; with a budget that fits a CPU
    (and what that takes) when the grid would run longer than LONG_RUN."""
    step, forward = step_seconds(base, train_set)
    total = run_seconds(base, len(train_set), test_images, cells, wrong_keys, step, forward)
    lines = [f"estimate: a {base.model} training step of {base.batch_size} images takes {step:.2f} s on this CPU "
             f"(measured on its first batches): {plural(cells, 'model')} x {plural(base.epochs, 'epoch')} x "
             f"{math.ceil(len(train_set) / base.batch_size)} steps, with evaluation, is about {rough_duration(total)}"]
    if total > LONG_RUN:
        small = dataclasses.replace(base, model=CPU_BUDGET["model"], epochs=CPU_BUDGET["epochs"])
        small_step, small_forward = step_seconds(small, train_set)
        budget_cells = len(parse_cells(CPU_BUDGET_CELLS))
        small_total = run_seconds(small, min(len(train_set), CPU_BUDGET["train_subset"]),
                                  min(test_images, CPU_BUDGET["test_subset"]), budget_cells, wrong_keys,
                                  small_step, small_forward)
        flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in CPU_BUDGET.items())
        lines.append(f"the defaults are sized for a GPU (--device cuda); for a run that fits this CPU (about "
                     f"{rough_duration(small_total)}), stop this one (Ctrl-C) and pass {flags} "
                     f"--cells {CPU_BUDGET_CELLS}")
    return lines


# --- the report ----------------------------------------------------------------------------


def _percent_cell(x: float | None) -> str:
    return percent(x, suffix="", missing="–")  # the table's header says %


def write_report(out: Path) -> None:
    """results.json, results.md and accuracy_vs_block_size.png from the finished cells in `out`."""
    records = _records(out)
    if not records:
        return
    plain = next((r for r in records if not r["ops"]), None)
    s = records[0]["settings"]
    write_json(out / "results.json", {"settings": s, "published": {
        "epochs": PUBLISHED_EPOCHS, "plain": PUBLISHED_PLAIN, "correct_key": PUBLISHED, "setting": PUBLISHED_SETTING},
        "cells": records})
    write_text(out / "results.md", results_markdown(records))

    def curves(value: Callable[[dict[str, Any]], float]) -> dict[str, dict[int, float]]:
        c: dict[str, dict[int, float]] = {op: {} for op in IN_BLOCK_TRANSFORMS}
        for r in records:
            if r["ops"]:
                c[r["ops"][0]][r["block_size"]] = 100 * value(r)
        return c

    from ..report.plots import accuracy_vs_block_size  # matplotlib: only when a report is drawn

    accuracy_vs_block_size(
        out / "accuracy_vs_block_size.png",
        correct=curves(lambda r: r["accuracy"]), published=PUBLISHED,
        wrong_mean=curves(lambda r: r["wrong_keys"]["mean"]), wrong_max=curves(lambda r: r["wrong_keys"]["max"]),
        plain=100 * plain["accuracy"] if plain else None, published_plain=PUBLISHED_PLAIN,
        chance=100 * records[0]["chance"],
        title=f"{s['model']} on {Path(s['data']).name}, {plural(s['epochs'], 'epoch')} (published: {PUBLISHED_EPOCHS})")


def results_markdown(records: list[dict[str, Any]]) -> str:
    """Our numbers beside the published ones, with the setting of each."""
    s = records[0]["settings"]
    plain = next((r for r in records if not r["ops"]), None)
    devices = sorted({r["device"] for r in records})
    wrong = next((r["wrong_keys"]["count"] for r in records if r["wrong_keys"]), s["wrong_keys"])
    lines = [
        "# Reproduction: model protection with block-wise key transforms",
        "",
        f"- **Ours:** {s['model']}, **{plural(s['epochs'], 'epoch')}**, batch {s['batch_size']}, SGD (Nesterov, momentum "
        f"{DEFAULTS.momentum}, weight decay {DEFAULTS.weight_decay}), one-cycle LR 0 -> {s['lr']} -> 0, "
        f"label smoothing {s['label_smoothing']}, "
        f"random crop + flip, bf16 autocast on CUDA; seed {s['seed']}.",
        f"- **Data:** {s['data']} ({records[0]['train_images']} train / {records[0]['test_images']} test images).",
        f"- **Device:** {', '.join(devices)}.",
        f"- **Published:** {PUBLISHED_SETTING} (docs/semantics.md, section 7).",
        "",
        f"Accuracy in % on the test set. Wrong keys: {wrong} fresh random keys per model. Plain images: the "
        "protected model fed unprotected (normalised) images, as an attacker without the key would. "
        "s/epoch leaves out the first epoch (warm-up); *vs plain* is that time over the plain model's; "
        "*transform* is the input transform's share of a training step (timed alone on one batch; for "
        "the plain model, its Normalize). "
        "Wall-clock is training plus evaluation of the model.",
        "",
    ]
    header = ["model", "M", f"correct key (ours, {s['epochs']} ep.)", f"published ({PUBLISHED_EPOCHS} ep.)",
              "wrong keys: mean / max", "plain images", "s/epoch", "vs plain", "transform", "wall-clock"]
    rows = []
    for r in records:
        op = r["ops"][0] if r["ops"] else None
        published = PUBLISHED_PLAIN if op is None else PUBLISHED.get(op, {}).get(r["block_size"])
        w = r["wrong_keys"]
        ratio = "–"  # only against a plain model timed on the same device
        if plain is not None and r is not plain and plain["device"] == r["device"]:
            ratio = f"{r['seconds_per_epoch'] / plain['seconds_per_epoch']:.2f}x"
        rows.append([TRANSFORM_LABELS.get(op, "plain"), r["block_size"] or "–", _percent_cell(r["accuracy"]),
                     "–" if published is None else f"{published:.2f}",
                     f"{_percent_cell(w['mean'])} / {_percent_cell(w['max'])}" if w else "–",
                     _percent_cell(r["plain_images_accuracy"]),
                     f"{r['seconds_per_epoch']:.1f}", ratio, f"{100 * r['transform_share_of_step']:.1f} %",
                     duration(r["train_seconds"] + r["eval_seconds"])])
    lines += markdown_table(header, rows)
    lines += ["", f"Chance: {_percent_cell(records[0]['chance'])} %."]
    if "jpeg" in s["data"].lower():
        lines += ["", "The data are re-encoded JPEGs (lossy): accuracies land below those published on the "
                  "PNG-exact data, for every model alike; compare each transform with the plain model of this run."]
    if s["epochs"] < PUBLISHED_EPOCHS:
        lines += ["", f"We trained {plural(s['epochs'], 'epoch')} against the published {PUBLISHED_EPOCHS}: expect our accuracy "
                  "to be lower, most for the harder transforms (large M)."]
    return "\n".join(lines) + "\n"
