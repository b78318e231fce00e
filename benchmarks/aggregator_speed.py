"""Fused deformable aggregator vs the official per-region formulation, same weights.

Prints max |difference| (must be <= 1e-5) and the speed ratio per batch size, measured
side by side (interleaved repetitions, median). Target: fused >= 3x faster on CPU at batch 8.

    python benchmarks/aggregator_speed.py [--threads 2] [--device cpu] [--batches 1 8]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from vpr_ros.model.aggregator import FusedDeformableAggregator


def timed(fn, sync) -> float:  # type: ignore[no-untyped-def]
    sync()
    t = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeats", type=int, default=15)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    ok = True
    print(f"device={a.device} threads={a.threads} D=768, map 16x16 (ViT-S/14 at 224 px)")
    print(f"{'compat':>6} {'batch':>5} {'fused ms':>9} {'per-region ms':>14} {'ratio':>6} {'max|diff|':>10}")
    for compat in (False, True):
        torch.manual_seed(0)
        agg = FusedDeformableAggregator(768, compat=compat).to(dev).eval()
        with torch.no_grad():
            for p in agg.parameters():  # non-trivial weights so that every path is exercised
                p.add_(torch.randn_like(p) * 0.02)
        for b in a.batches:
            f, c = torch.randn(b, 768, 16, 16, device=dev), torch.randn(b, 768, device=dev)
            with torch.no_grad():
                diff = (agg(f, c) - agg.forward_per_region(f, c)).abs().max().item()
                for _ in range(3):
                    agg(f, c), agg.forward_per_region(f, c)
                tf, tp = [], []
                for _ in range(a.repeats):  # interleaved: both see the same machine load
                    tf.append(timed(lambda: agg(f, c), sync))
                    tp.append(timed(lambda: agg.forward_per_region(f, c), sync))
            mf, mp = statistics.median(tf) * 1e3, statistics.median(tp) * 1e3
            ok &= diff <= 1e-5
            print(f"{str(compat):>6} {b:>5} {mf:>9.2f} {mp:>14.2f} {mp / mf:>5.1f}x {diff:>10.2e}")
    print("outputs agree within 1e-5" if ok else "OUTPUTS DIFFER")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
