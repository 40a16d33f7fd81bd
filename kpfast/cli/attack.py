"""kpfast attack: attack a protected model as someone who stole its file but not its key.

  key-space        exact log2 size of the key space of the model's chain
  key-search       random key search on a labelled batch (successive halving or exhaustive)
  key-estimate     heuristic key estimation: swaps and bit flips kept when the batch accuracy holds
  finetune         fine-tune the stolen weights on n plain images, beside training from scratch
  known-plaintext  recover the key from P (plain, protected) pairs (needs --key to make the pairs)

The attacks never see the key. With --key (the model's key file) they also report how much of it
they recovered ("evaluation mode"). Writes <stage>.json, report.md, report.json and a plot to
--out; re-running the same command resumes or reuses what is done. --budget quick (the default on
a CPU) is sized for a small CNN on a CPU; full (the default on CUDA) is the reference's scale; each
--flag below overrides one part of the budget (--estimate-screen cuts key estimation for large keys).
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ..engine.device import resolve_device
from ..engine.distributed import process_group, rank_device
from ..engine.ranks import Ranks
from ..errors import ConfigError, Interrupted
from ..protection.attacks import audit as audits
from .options import add_device, floats, positive_int

ATTACKS = ("key-space", "key-search", "key-estimate", "finetune", "known-plaintext")
DATA_PARALLEL = ("finetune",)  # the attacks that train: torchrun --nproc-per-node N -m kpfast attack finetune


def one_process_only(ranks: Ranks, message: str) -> None:
    """Stop a multi-rank launch of what runs as one process: raised on every rank, reported by rank 0."""
    def refuse() -> None:
        raise ConfigError(message)

    if ranks.distributed:
        ranks.from_main(refuse)


def counts(text: str) -> tuple[int, ...]:
    """'1,2,4' -> (1, 2, 4), each >= 1."""
    return tuple(positive_int(v.strip()) for v in text.split(",") if v.strip())


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    """The model, data, output and budget options of `kpfast attack` and `kpfast audit`."""
    p.add_argument("--model", required=True, help="the protected model.pt (from 'kpfast train')")
    p.add_argument("--data", required=True,
                   help="the attacker's data: fashion-mnist | cifar10 | synthetic | path of an image folder or zip")
    p.add_argument("--data-root", help="folder of the data set's files (cifar10, fashion-mnist)")
    p.add_argument("--out", required=True, help="results folder (resumable)")
    add_device(p)
    p.add_argument("--seed", type=int, default=0, help="the attacker's randomness: samples, candidates (default: 0)")
    p.add_argument("--cache", help="folder to share from-scratch fine-tuning runs between models")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    b = p.add_argument_group("budget (--budget sets all; each flag overrides one part)")
    b.add_argument("--budget", choices=sorted(audits.BUDGETS), help="quick (default on CPU) or full (default on CUDA)")
    b.add_argument("--test-subset", type=positive_int, metavar="N", help="test images to score on (full: all)")
    b.add_argument("--wrong-keys", type=positive_int, metavar="R", help="random wrong keys to score against")
    b.add_argument("--keys", type=positive_int, metavar="N", help="random key search: candidate keys")
    b.add_argument("--search-batch", type=positive_int, metavar="N", help="random key search: labelled images")
    b.add_argument("--strategy", choices=("halving", "exhaustive", "both"), help="random key search strategy")
    b.add_argument("--space", choices=("tables", "generate", "seed"),
                   help="candidates: generate() keys with random FFX tables (default), with passwords, or seeds")
    b.add_argument("--passes", type=positive_int, help="key estimation passes")
    b.add_argument("--estimate-batch", type=positive_int, metavar="N", help="key estimation: labelled images")
    b.add_argument("--criterion", choices=("accuracy+loss", "accuracy"), help="key estimation criterion")
    b.add_argument("--estimate-screen", type=int, metavar="N",
                   help="key estimation: score each launch of edits on N images first, the best 8 on the rest "
                        "(0: off)")
    b.add_argument("--fractions", type=floats, help="fine-tuning: n as fractions of the training set, e.g. 0.01,0.1")
    b.add_argument("--steps", type=positive_int, help="fine-tuning: optimizer steps per run")
    b.add_argument("--finetune-batch", type=positive_int, metavar="N", help="fine-tuning: images per step")
    b.add_argument("--lr", type=float, help="fine-tuning: peak learning rate")
    b.add_argument("--pairs", type=counts, help="known plaintext: numbers of pairs P, e.g. 1,2,4,8")
    b.add_argument("--keys-per-launch", type=positive_int, metavar="K", help="candidate keys scored in one launch")
    b.add_argument("--images-per-launch", type=positive_int, metavar="N", help="images per launch")


def budget_from(args: argparse.Namespace, device: str) -> tuple[audits.Budget, str]:
    name = args.budget or ("full" if resolve_device(device).type == "cuda" else "quick")
    b = audits.BUDGETS[name]
    strategies = {"both": ("halving", "exhaustive"), None: b.search_strategies}.get(args.strategy, (args.strategy,))
    changes = {"test_images": args.test_subset, "wrong_keys": args.wrong_keys, "search_keys": args.keys,
               "search_batch": args.search_batch, "search_strategies": strategies, "search_space": args.space,
               "estimate_passes": args.passes, "estimate_batch": args.estimate_batch,
               "estimate_criterion": args.criterion, "estimate_screen": args.estimate_screen,
               "finetune_fractions": args.fractions,
               "finetune_steps": args.steps, "finetune_batch": args.finetune_batch, "finetune_lr": args.lr,
               "pairs": args.pairs, "keys_per_launch": args.keys_per_launch,
               "images_per_launch": args.images_per_launch}
    changes = {k: v for k, v in changes.items() if v is not None}
    custom = any(getattr(b, k) != v for k, v in changes.items())
    return dataclasses.replace(b, **changes), f"{name}+custom" if custom else name


def prepare(args: argparse.Namespace, key: str | None, ranks: Ranks | None = None) -> audits.Audit:
    """The audit of the command line; in a distributed job on this rank's device, rank 0 speaking."""
    ranks = ranks or Ranks()
    device = str(rank_device(resolve_device(args.device), ranks))
    budget, name = budget_from(args, device)
    return audits.prepare(args.model, key, args.data, args.data_root, args.out, budget=budget, budget_name=name,
                          seed=args.seed, device=device, cache=args.cache,
                          progress=not args.no_progress and ranks.is_main,
                          log=print if ranks.is_main else (lambda _: None))


def add_arguments(p: argparse.ArgumentParser, name: str) -> None:
    p.add_argument("attack", choices=ATTACKS, help="the attack to run")
    add_common_arguments(p)
    p.add_argument("--key", help="the model's key file: only to score what the attack recovered "
                                 "(known-plaintext needs it to make the pairs)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    with process_group(args.device) as ranks:  # a single process outside torchrun
        if args.attack not in DATA_PARALLEL:
            one_process_only(ranks, f"{args.attack} runs as one process; under torchrun only "
                                    f"{', '.join(DATA_PARALLEL)} trains data-parallel")
        audit = prepare(args, args.key, ranks)
        try:
            audits.run_stage(audit, args.attack)
        except KeyboardInterrupt as e:
            raise Interrupted(f"{e or 'interrupted'}; progress is kept in {args.out}: run the same command "
                              "again") from None
        if not ranks.is_main:  # rank 0 writes the report
            return 0
    report = audits.write_report(audit)
    print(Path(report).read_text())
    print(f"wrote {Path(args.out) / (args.attack + '.json')} and {report}")
    return 0
