"""Throughput of the fused transform beside a plain uint8 -> float copy of the same images (the
memory-traffic floor) and any peer implementations, interleaved in one run so that all see the
same machine load. ``kpfast bench`` prints the table; ``benchmarks/`` adds the reference-style
peer (``benchmarks/peer.py``) and the out= table (``benchmarks/out_table.py``).

Without ``out``, both the transform and the copy write a fresh output every call (what a plain
``transform(x)`` costs, page faults of the new memory included); with ``out``, each writes into a
warm buffer of its own (``transform(x, out=buf)`` against ``buf.copy_(x)``), the way a training
loop that keeps its batch buffer runs. Times are medians of wall-clock seconds; ``cpu_ms`` are
medians of this process's CPU seconds per call, which other jobs on a shared machine disturb less
(with several threads they include the threads' waits), and ``best_ms`` the fastest calls.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch

from ..data.stats import IMAGENET
from ..keys import KeySet
from ..plan import IN_BLOCK_TRANSFORMS
from ..transforms import BlockTransform
from .tables import markdown_table

CHAIN = IN_BLOCK_TRANSFORMS  # Shuffle + NP + FFX, the papers' strongest chain
# A peer computes the same images as the fused op: peer(x, keys, ops, mean, std) -> float tensor.
Peer = Callable[[torch.Tensor, KeySet, tuple[str, ...], tuple[float, ...], tuple[float, ...]], torch.Tensor]


@dataclass(frozen=True)
class Case:
    name: str
    batch: int
    size: int
    block_size: int


CASES = (Case("CIFAR-10", 512, 32, 4), Case("ImageNet", 64, 224, 4), Case("ImageNet", 64, 224, 16))


def _timer(device: torch.device) -> Callable[[Callable[[], object]], tuple[float, float]]:
    def seconds(fn: Callable[[], object]) -> tuple[float, float]:
        """(wall-clock, process CPU) seconds of one call."""
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start, time.process_time() - cpu
    return seconds


def benchmark_case(case: Case, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                   repeats: int = 7, peers: Mapping[str, Peer] | None = None, peer_repeats: int = 3,
                   out: bool = False) -> dict:
    """Median seconds of kpfast, the copy and each peer (checked to compute the same images
    first); peers are slow, so they run only `peer_repeats` of the `repeats` rounds. `out`: kpfast
    and the copy write into warm buffers of their own (see the module's doc)."""
    device = torch.device(device)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (case.batch, 3, case.size, case.size), generator=g, dtype=torch.uint8).to(device)
    keys = KeySet.generate(case.block_size)
    fused = BlockTransform(keys, CHAIN, IMAGENET.mean, IMAGENET.std, dtype=dtype).to(device)
    if out:
        into, copied = (torch.empty(x.shape, dtype=dtype, device=device) for _ in range(2))
        candidates = {"kpfast": lambda: fused(x, out=into), "copy": lambda: copied.copy_(x)}
    else:
        candidates = {
            "kpfast": lambda: fused(x),
            "copy": lambda: torch.empty(x.shape, dtype=dtype, device=device).copy_(x),
        }
    for name, peer in (peers or {}).items():
        candidates[name] = lambda peer=peer: peer(x, keys, CHAIN, IMAGENET.mean, IMAGENET.std).to(dtype)
        torch.testing.assert_close(candidates["kpfast"]().float(), candidates[name]().float(),
                                   rtol=0, atol=1e-2 if dtype != torch.float32 else 1e-5)
    seconds = _timer(device)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in candidates}
    for fn in candidates.values():
        fn()  # warm-up (and, with out, the buffers' pages exist from here on)
    for i in range(repeats):
        for name, fn in candidates.items():
            if name in ("kpfast", "copy") or i < peer_repeats:
                times[name].append(seconds(fn))
    med = {name: statistics.median(wall for wall, _ in t) for name, t in times.items()}
    cpu = {name: statistics.median(c for _, c in t) for name, t in times.items()}
    best = {name: min(wall for wall, _ in t) for name, t in times.items()}
    moved = x.numel() * (1 + torch.finfo(dtype).bits // 8)  # bytes read + written
    return {"case": case.name, "shape": "x".join(map(str, x.shape)), "M": case.block_size,
            "dtype": str(dtype).removeprefix("torch."), "out": out, "threads": torch.get_num_threads(),
            "ms": {k: v * 1e3 for k, v in med.items()}, "cpu_ms": {k: v * 1e3 for k, v in cpu.items()},
            "best_ms": {k: v * 1e3 for k, v in best.items()}, "time_vs_copy": med["kpfast"] / med["copy"],
            "cpu_vs_copy": cpu["kpfast"] / cpu["copy"], "best_vs_copy": best["kpfast"] / best["copy"],
            "kpfast_GBps": moved / med["kpfast"] / 1e9}


def run(cases: Iterable[Case] = CASES, **kwargs) -> list[dict]:
    return [benchmark_case(c, **kwargs) for c in cases]


def format_table(rows: list[dict]) -> str:
    """One line per case: kpfast, the copy, each peer (and kpfast's speed-up over it)."""
    peers = [name for name in rows[0]["ms"] if name not in ("kpfast", "copy")]
    header = ["batch", "M", "out", "kpfast ms", "u8->float copy ms", *(f"{p} ms" for p in peers),
              "kpfast / copy", *(f"kpfast vs {p}" for p in peers), "kpfast GB/s", "CPU time kpfast / copy"]
    lines = markdown_table(header, (
        [f"{r['case']} {r['shape']}", r["M"], r["dtype"], f"{r['ms']['kpfast']:.2f}", f"{r['ms']['copy']:.2f}",
         *(f"{r['ms'][p]:.1f}" for p in peers), f"{r['time_vs_copy']:.2f}x",
         *(f"{r['ms'][p] / r['ms']['kpfast']:.1f}x faster" for p in peers), f"{r['kpfast_GBps']:.2f}",
         f"{r['cpu_vs_copy']:.2f}x"]
        for r in rows))
    return "\n".join(lines)
