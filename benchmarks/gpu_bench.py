#!/usr/bin/env python
"""GPU benchmark of the fused block-transform op against a batched torch reference and a copy.

The one command for a GPU machine (build with CUDA, all tests, memcheck of the CUDA kernels, this
benchmark), from the repository root:

    KPFAST_CUDA=ON pip install --no-build-isolation --no-deps -e . && python -m pytest tests -q && PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 1 python -m pytest tests/test_cuda.py -q -x -k "not device_assert and not large" && python benchmarks/gpu_bench.py --out $OUT/gpu_bench.md

CPU smoke test of this script (tiny sizes, slow): python benchmarks/gpu_bench.py --quick --device cpu

What is timed, for the CIFAR-10 batch (512x3x32x32, M = 4) and an ImageNet batch (256x3x224x224,
M = 4 and M = 16), uint8 images in:

* fused: ``kpfast.BlockTransform`` (Shuffle + NP + FFX + Normalize, a fresh key) on uint8
  images, to float16 and to float32: one gather and one table lookup per element;
* reference: the same chain with ``reference_transform`` of ``benchmarks/peer.py``, the batched torch
  program of the reference algorithm (x / 255, segment into blocks, index, fold back, Normalize),
  float32 out; the fused output must equal it before anything is timed;
* copy: a device-to-device copy moving the same bytes as the fused op (a buffer of
  (input bytes + output bytes) / 2, read once and written once): the bandwidth ceiling.

On CUDA each figure is the median over --reps replays of a CUDA graph holding several calls,
timed with CUDA events after warm-up, so it is device time without the host's launch overhead; the
"eager" column is the median of single eager calls (events around one call), which includes it.
GB/s count bytes read + written once (input + output); the reference moves more than that.
"""
from __future__ import annotations

import argparse
import math
import platform
import statistics
import time
import torch

import kpfast
from kpfast.data.stats import CIFAR10, IMAGENET
from peer import reference_transform  # benchmarks/peer.py, beside this script


def device_ms(fn, device: torch.device, warmup: int, reps: int, bytes_per_call: int):
    """(graph ms, eager ms) per call: medians of `reps` repetitions after `warmup` calls."""
    for _ in range(warmup):
        fn()
    if device.type != "cuda":
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        ms = statistics.median(times)
        return ms, ms

    def events(run, n):
        pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                 for _ in range(n)]
        for start, end in pairs:
            start.record()
            run()
            end.record()
        torch.cuda.synchronize()
        return statistics.median(s.elapsed_time(e) for s, e in pairs)

    eager = events(fn, reps)
    # Enough calls per graph for a replay of about 0.25 GB of traffic.
    inner = max(1, min(50, math.ceil(2.5e8 / bytes_per_call)))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(inner):
            fn()
    graph.replay()
    return events(graph.replay, reps) / inner, eager


def gbps(nbytes: int, ms: float) -> float:
    return nbytes / (ms * 1e-3) / 1e9


def bench_case(name, N, C, H, W, M, mean, std, device, args, seed):
    keys = kpfast.KeySet.generate(M, C)
    chain = ("shuffle", "negpos", "ffx")
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (N, C, H, W), dtype=torch.uint8, generator=g).to(device)
    ref = reference_transform(x, keys, chain, mean, std)
    in_bytes = x.numel()

    ref_ms, _ = device_ms(lambda: reference_transform(x, keys, chain, mean, std), device, args.warmup,
                          args.reps, in_bytes + ref.numel() * 4)
    rows = []
    for dtype in (torch.float16, torch.float32):
        fused = kpfast.BlockTransform(keys, chain, mean, std, dtype=dtype).to(device)
        out = fused(x)
        torch.testing.assert_close(out.float(), ref.to(dtype).float(), atol=1e-6, rtol=0,
                                   msg=lambda m: f"fused op != reference ({name}, M={M}, {dtype}): {m}")
        nbytes = in_bytes + out.numel() * out.element_size()
        buf = torch.empty(nbytes // 2, dtype=torch.uint8, device=device)
        dst = torch.empty_like(buf)
        fused_ms, fused_eager = device_ms(lambda: fused(x), device, args.warmup, args.reps, nbytes)
        copy_ms, _ = device_ms(lambda: dst.copy_(buf), device, args.warmup, args.reps, nbytes)
        tables = fused.program().launches[0].tables.shape[0]
        rows.append(dict(
            batch=f"{name} {N}x{C}x{H}x{W}", M=M, T=tables, out=str(dtype).replace("torch.", ""),
            fused_ms=fused_ms, fused_eager=fused_eager, fused_gbps=gbps(nbytes, fused_ms),
            ref_ms=ref_ms, speedup=ref_ms / fused_ms, copy_ms=copy_ms, copy_gbps=gbps(nbytes, copy_ms),
            of_copy=gbps(nbytes, fused_ms) / gbps(nbytes, copy_ms),
        ))
    return rows


def markdown(rows, device_name: str, args) -> str:
    head = ("| batch | M | tables | out | fused ms | fused eager ms | fused GB/s | reference ms "
            "| speed-up | copy ms | copy GB/s | fused / copy |")
    lines = [
        f"# kpfast fused block op on {device_name}",
        "",
        f"torch {torch.__version__}, median of {args.reps} repetitions after {args.warmup} warm-up calls"
        + (" (CUDA graphs + CUDA events)" if args.device == "cuda" else " (wall clock)")
        + (", --quick sizes" if args.quick else "") + ". GB/s count input + output bytes once; "
        "copy moves the same bytes; speed-up = reference ms / fused ms (reference: float32 out).",
        "",
        head,
        "|" + " --- |" * (head.count("|") - 1),
    ]
    for r in rows:
        lines.append(
            f"| {r['batch']} | {r['M']} | {r['T']} | {r['out']} | {r['fused_ms']:.4f} | {r['fused_eager']:.4f} "
            f"| {r['fused_gbps']:.1f} | {r['ref_ms']:.4f} | {r['speedup']:.1f}x | {r['copy_ms']:.4f} "
            f"| {r['copy_gbps']:.1f} | {100 * r['of_copy']:.0f}% |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    p.add_argument("--quick", action="store_true", help="tiny batches (a smoke test, e.g. on a CPU)")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions (default 100, 5 with --quick)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up calls (default 10, 2 with --quick)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the Markdown table to this file")
    args = p.parse_args(argv)
    args.reps = args.reps or (5 if args.quick else 100)
    args.warmup = args.warmup or (2 if args.quick else 10)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA device: use --device cpu (with --quick)")
    if args.device == "cuda" and not torch._C._dispatch_has_kernel_for_dispatch_key("kpfast::block_lut", "CUDA"):
        p.error("kpfast was built without CUDA kernels: KPFAST_CUDA=ON pip install --no-build-isolation --no-deps -e .")
    device = torch.device(args.device)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "CPU")

    cifar_n, imagenet_n = (8, 2) if args.quick else (512, 256)
    cases = [("CIFAR-10", cifar_n, 3, 32, 32, 4, CIFAR10.mean, CIFAR10.std),
             ("ImageNet", imagenet_n, 3, 224, 224, 4, IMAGENET.mean, IMAGENET.std),
             ("ImageNet", imagenet_n, 3, 224, 224, 16, IMAGENET.mean, IMAGENET.std)]
    rows = []
    for i, case in enumerate(cases):
        with torch.no_grad():
            rows += bench_case(*case, device, args, seed=args.seed + i)
    table = markdown(rows, device_name, args)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table)


if __name__ == "__main__":
    main()
