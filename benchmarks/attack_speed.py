#!/usr/bin/env python
"""The key-search speed table: kpfast's batched random key search beside the reference-style loop
(a fresh key object, a fresh transform and one model call per key, as the reference's
``random_key_search``), on one model, one batch of labelled images and one device, in one run.

    python benchmarks/attack_speed.py --model runs/m/model.pt --data fashion-mnist [--keys 1024]
    python benchmarks/attack_speed.py --data synthetic --ops shuffle,negpos,ffx -M 4   # untrained small CNN

Rows (keys/s over the whole search, the transform and the model included):

* reference loop, password keys: ``KeySet.generate`` per key (its FFX table derived from the
  password, 2,560 HMACs in Python), a fresh ``BlockTransform``, one model call on the batch;
* reference loop, table keys: the same loop over the batched search's own candidates (a fresh
  key object each, rebuilt from the candidate's parts: no password, no HMAC);
* batched, exhaustive: every candidate on the whole batch, many keys per launch (its scores are
  checked to equal the loop's on the keys both scored, so it finds the same best key);
* batched, successive halving: the default of ``kpfast attack key-search``.

The loops' cost per key does not depend on how many keys a search tries, so they run on the
first ``--loop-keys`` candidates; the batched searches run on all ``--keys``. With a trained
``--model``, the best keys of both batched searches are re-scored on the test set.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from kpfast import BlockTransform, KeySet
from kpfast.data import dataset_stats, load_dataset
from kpfast.engine.device import default_device, device_name, resolve_device
from kpfast.models import create_model
from kpfast.protection import ProtectedModel
from kpfast.protection.attacks import random_key_search
from kpfast.protection.attacks.scoring import (
    candidate_keys,
    load_stolen,
    sample,
    score,
    stolen_from,
)
from kpfast.protection.experiment import parse_ops
from kpfast.report.tables import markdown_table, percent


def reference_loop(stolen, keys, x, y) -> tuple[float, list[int]]:
    """Seconds and correct counts of the reference-style loop over ``keys`` (callables making a fresh key)."""
    counts = []
    start = time.perf_counter()
    with torch.inference_mode():
        for make in keys:
            transform = stolen.transform(make())
            counts.append(int((stolen.network(transform(x)).argmax(1) == y).sum()))
    return time.perf_counter() - start, counts


def launch_table(stolen, keys, x, y, sizes: list[int], device) -> None:
    """ms per scored image of the batched scoring at each launch size (the best of 3 interleaved rounds)."""
    best = dict.fromkeys(sizes, float("inf"))
    for _ in range(3):
        for n in sizes:
            start = time.perf_counter()
            score(stolen, keys, x, y, keys_per_launch=max(1, n // len(y)), images_per_launch=n)
            best[n] = min(best[n], (time.perf_counter() - start) / (len(keys) * len(y)))
    print(f"Scoring {len(keys)} keys x {len(y)} images, {stolen.arch}, {device_name(device)}:\n")
    print("\n".join(markdown_table(["images per launch", "ms per scored image"],
                                   [[f"{n:,}", f"{1e3 * best[n]:.2f}"] for n in sizes])))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="a protected model.pt (default: an untrained small CNN behind a fresh key)")
    p.add_argument("--data", default="synthetic")
    p.add_argument("--data-root")
    p.add_argument("--ops", default="shuffle,negpos,ffx", help="the chain of the untrained model")
    p.add_argument("-M", "--block-size", type=int, default=4)
    p.add_argument("--keys", type=int, default=1024, help="candidates of the batched searches")
    p.add_argument("--loop-keys", type=int, default=128, help="candidates of each reference-style loop")
    p.add_argument("--batch", type=int, default=64, help="labelled images the keys are scored on")
    p.add_argument("--test-images", type=int, default=2000)
    p.add_argument("--images-per-launch", type=int, default=256,
                   help="images per model call of the batched searches (kpfast audit --budget quick's launch)")
    p.add_argument("--start-images", type=int, default=2, help="images per key in halving's first round")
    p.add_argument("--device", default=default_device())
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the rows here")
    p.add_argument("--launch-sizes", help="instead: time scoring --loop-keys keys at each of these images per launch, "
                                          "e.g. 64,256,1024 (3 rounds, interleaved)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    train, test = load_dataset(args.data, args.data_root, progress=False)
    if args.model:
        stolen = load_stolen(args.model, device)
    else:
        torch.manual_seed(args.seed)
        stats = dataset_stats(args.data, train)
        key = KeySet.generate(args.block_size, train.images.shape[1])
        net = create_model("small_cnn", train.num_classes, train.images.shape[1])
        stolen = stolen_from(ProtectedModel(net, BlockTransform(key, parse_ops(args.ops), stats.mean, stats.std)).to(device))
    batch = sample(train, args.batch, args.seed).to(device)
    x, y = batch.images, batch.labels
    test = test.first_per_class(args.test_images).to(device)
    M, C = stolen.block_size, stolen.channels
    keys = candidate_keys(args.keys, M, C, np.random.default_rng(args.seed))
    loop_keys = keys[:args.loop_keys]
    launch = {"images_per_launch": args.images_per_launch}

    if args.launch_sizes:
        launch_table(stolen, loop_keys, x, y, [int(n) for n in args.launch_sizes.split(",")], device)
        return
    rng = np.random.default_rng(args.seed + 1)
    rows, results = [], {}
    password_s, _ = reference_loop(stolen, [lambda: KeySet.generate(M, C, rng=rng)] * len(loop_keys), x, y)
    rows.append(("reference loop, password keys", len(loop_keys), password_s))

    def fresh(k: KeySet):
        return lambda: KeySet.from_tables(k.perm, k.np_mask, k.ffx_mask, k.ffx_lut, block_size=M, channels=C)

    tables_s, loop_counts = reference_loop(stolen, [fresh(k) for k in loop_keys], x, y)
    rows.append(("reference loop, table keys", len(loop_keys), tables_s))
    same = score(stolen, loop_keys, x, y, **launch).correct.tolist() == loop_counts
    for strategy in ("exhaustive", "halving"):
        r = random_key_search(stolen, x, y, test.images, test.labels, keys=keys, batch=args.batch, strategy=strategy,
                              start_images=args.start_images, **launch)
        results[strategy] = r
        rows.append((f"batched, {strategy}", len(keys), r.seconds))
    tables_again, _ = reference_loop(stolen, [fresh(k) for k in loop_keys], x, y)  # drift check
    rows.append(("reference loop, table keys (again, last)", len(loop_keys), tables_again))

    reference = len(loop_keys) / password_s
    table = [[name, f"{n:,}", f"{s:.1f}", f"{n / s:,.1f}", f"{n / s / reference:.1f}x"] for name, n, s in rows]
    print(f"Random key search, {','.join(stolen.ops)} at M = {M} (C = {C}), {stolen.arch}, batch of {args.batch} "
          f"images, {device_name(device)}:\n")
    print("\n".join(markdown_table(["method", "keys", "seconds", "keys/s", "vs reference loop"], table)))
    print(f"\nBatched scores equal the loop's on the {len(loop_keys)} keys both scored: {'yes' if same else 'NO'}.")
    ex, ha = results["exhaustive"], results["halving"]
    rounds = " -> ".join(f"{r['keys']}x{r['images']}" for r in ha.rounds)
    print(f"Best key, test set ({len(test)} images): exhaustive {percent(ex.best_test_accuracy)} "
          f"(batch {percent(ex.best_batch_accuracy)}), halving {percent(ha.best_test_accuracy)} "
          f"(batch {percent(ha.best_batch_accuracy)}); images scored: exhaustive {ex.model_evaluations:,}, "
          f"halving {ha.model_evaluations:,} ({rounds}).")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "device": device_name(device), "ops": list(stolen.ops), "block_size": M, "channels": C,
            "model": args.model or "untrained small_cnn", "data": args.data, "batch": args.batch, "seed": args.seed,
            "rows": [{"method": name, "keys": n, "seconds": s, "keys_per_second": n / s} for name, n, s in rows],
            "scores_equal": same, "exhaustive": ex.as_dict(), "halving": ha.as_dict()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
