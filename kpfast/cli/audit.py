"""kpfast audit: the whole security evaluation of a protected model in one command.

Accuracy with the correct key, with R wrong keys and on plain images, then every attack of
'kpfast attack' at the chosen budget (key space, random key search, heuristic key estimation,
fine-tuning against training from scratch, known-plaintext key recovery). Writes one report.md
with a verdict line per claim, report.json and the plots to --out. The attacks never see the key;
it serves to measure the protection and to score what each attack recovered.

Resumable: re-running the same command skips the finished stages and continues an interrupted
one. --budget quick (the default on a CPU) is sized for a small CNN on a CPU; full (the default on
CUDA) is the reference's scale (20,000 keys, 10 estimation passes, the whole test set).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..engine.distributed import process_group
from ..errors import Interrupted
from ..protection.attacks import audit as audits
from .attack import DATA_PARALLEL, add_common_arguments, one_process_only, prepare


def add_arguments(p: argparse.ArgumentParser, name: str) -> None:
    add_common_arguments(p)
    p.add_argument("--key", required=True, help="the model's key file")
    p.add_argument("--stages", default=",".join(audits.STAGES),
                   help=f"stages to run, comma-separated (default: all: {','.join(audits.STAGES)})")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    with process_group(args.device) as ranks:  # a single process outside torchrun
        # The stages search keys on one device; the data-parallel one runs on its own first and the
        # audit reuses its record (same --key, --out and settings).
        one_process_only(ranks, f"kpfast audit runs as one process; to run {', '.join(DATA_PARALLEL)} data-parallel, "
                                f"run 'torchrun ... -m kpfast attack {DATA_PARALLEL[0]}' with the same --key, --out "
                                "and budget first, then 'kpfast audit' reuses its result")
    audit = prepare(args, args.key)
    try:
        audits.run_audit(audit, stages)
    except KeyboardInterrupt as e:
        raise Interrupted(f"{e or 'interrupted'}; finished stages are kept in {args.out}: run the same command "
                          "again to continue") from None
    report = Path(args.out) / "report.md"
    print(report.read_text())
    print(f"wrote {report}, {Path(args.out) / 'report.json'} and the plots")
    return 0
