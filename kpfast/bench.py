"""Moved to :mod:`kpfast.report.bench` (the reference-style peer: ``benchmarks/peer.py``); this
alias warns and goes away in the next release."""
from ._moved import moved

__getattr__ = moved(__name__, {"IMAGENET_MEAN": "kpfast.data.stats:IMAGENET.mean",
                               "IMAGENET_STD": "kpfast.data.stats:IMAGENET.std",
                               **{name: f"kpfast.report.bench:{name}" for name in
                                  ("CASES", "CHAIN", "Case", "benchmark_case", "format_table", "run")}})
