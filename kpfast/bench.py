"""Throughput of the fused transform, side by side with the reference-style torch peer and with a
plain uint8 -> float copy of the same images (the memory-traffic floor), in one run."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from .keys import KeySet
from .reference import reference_transform
from .transforms import BlockTransform

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CHAIN = ("shuffle", "negpos", "ffx")


@dataclass(frozen=True)
class Case:
    name: str
    batch: int
    size: int
    block_size: int


CASES = (Case("CIFAR-10", 512, 32, 4), Case("ImageNet", 64, 224, 4), Case("ImageNet", 64, 224, 16))


def _timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    def seconds(fn: Callable[[], object]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start
    return seconds


def benchmark_case(case: Case, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                   repeats: int = 7, peer_repeats: int = 3) -> dict:
    """Median seconds of kpfast, the peer and the copy; the three are interleaved so that they
    see the same machine load."""
    device = torch.device(device)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (case.batch, 3, case.size, case.size), generator=g, dtype=torch.uint8).to(device)
    keys = KeySet.generate(case.block_size)
    fused = BlockTransform(keys, CHAIN, IMAGENET_MEAN, IMAGENET_STD, dtype=dtype).to(device)
    candidates = {
        "kpfast": lambda: fused(x),
        "peer": lambda: reference_transform(x, keys, CHAIN, IMAGENET_MEAN, IMAGENET_STD).to(dtype),
        "copy": lambda: torch.empty(x.shape, dtype=dtype, device=device).copy_(x),
    }
    torch.testing.assert_close(candidates["kpfast"]().float(), candidates["peer"]().float(),
                               rtol=0, atol=1e-2 if dtype != torch.float32 else 1e-5)
    seconds = _timer(device)
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for name, fn in candidates.items():
        fn()  # warm-up
    for i in range(repeats):
        for name, fn in candidates.items():
            if name != "peer" or i < peer_repeats:
                times[name].append(seconds(fn))
    med = {name: statistics.median(t) for name, t in times.items()}
    moved = x.numel() * (1 + torch.finfo(dtype).bits // 8)  # bytes read + written
    return {"case": case.name, "shape": "x".join(map(str, x.shape)), "M": case.block_size,
            "dtype": str(dtype).removeprefix("torch."), **{f"{k}_ms": v * 1e3 for k, v in med.items()},
            "speedup_vs_peer": med["peer"] / med["kpfast"], "time_vs_copy": med["kpfast"] / med["copy"],
            "kpfast_GBps": moved / med["kpfast"] / 1e9}


def run(cases: Iterable[Case] = CASES, **kwargs) -> list[dict]:
    return [benchmark_case(c, **kwargs) for c in cases]


def format_table(rows: list[dict]) -> str:
    lines = ["| batch | M | out | kpfast ms | peer ms | u8->float copy ms | kpfast vs peer | kpfast / copy | kpfast GB/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} {r['shape']} | {r['M']} | {r['dtype']} | {r['kpfast_ms']:.2f} | "
                     f"{r['peer_ms']:.1f} | {r['copy_ms']:.2f} | {r['speedup_vs_peer']:.1f}x faster | "
                     f"{r['time_vs_copy']:.2f}x | {r['kpfast_GBps']:.2f} |")
    return "\n".join(lines)
