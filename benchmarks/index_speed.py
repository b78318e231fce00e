"""Approximate map indexes vs exact search on synthetic descriptors, side by side.

Database: N unit vectors drawn around N/20 "places" (so that near-duplicates exist, as along a
robot's trajectory); queries: database vectors perturbed with noise (revisits). For each index:
build time, search latency per query (batch of queries, same threads), recall@1 relative to
exact search (fraction of queries whose approximate top-1 equals the exact top-1), speed-up.
Target (maps issue): >= 10x faster than exact at recall >= 0.95 of exact, 1M x 512, CPU.

    python benchmarks/index_speed.py --sizes 100000 1000000 --dims 512 [--queries 1000]
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np


def synthetic(n: int, d: int, queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    places = rng.standard_normal((max(1, n // 20), d), dtype=np.float32)
    db = np.empty((n, d), np.float32)
    for i in range(0, n, 100_000):  # in blocks: bounded temporary memory
        j = min(n, i + 100_000)
        db[i:j] = places[rng.integers(0, len(places), j - i)] + 0.6 * rng.standard_normal((j - i, d), dtype=np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    q = db[rng.integers(0, n, queries)] + 0.02 * rng.standard_normal((queries, d), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return db, q


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    ap.add_argument("--dims", type=int, nargs="+", default=[512])
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--kinds", nargs="+", default=["hnsw", "ivf", "ivfpq"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--nlist", type=int, default=0, help="IVF cells (0 = 4 sqrt(N))")
    ap.add_argument("--nprobe", type=int, default=16)
    a = ap.parse_args(argv)
    import faiss

    from vpr_ros.config import IndexConfig
    from vpr_ros.mapping.index import build_index

    faiss.omp_set_num_threads(a.threads)
    results = []
    print(f"{'N':>8} {'D':>5} {'index':>6} {'build s':>8} {'ms/query':>9} {'speed-up':>9} {'R@1 vs exact':>13}")
    for n in a.sizes:
        for d in a.dims:
            db, q = synthetic(n, d, a.queries)
            cfg = IndexConfig(pq_m=min(64, d // 8), ivf_nlist=a.nlist, ivf_nprobe=a.nprobe)
            timings = {}
            tops = {}
            for kind in ["flat", *a.kinds]:
                t0 = time.perf_counter()
                index = build_index(db, kind, cfg)
                build = time.perf_counter() - t0
                index.search(q[:10], 1)  # warm-up
                t0 = time.perf_counter()
                _, ids = index.search(q, 1)
                per_query = (time.perf_counter() - t0) * 1e3 / len(q)
                tops[kind], timings[kind] = ids[:, 0], per_query
                rec = float(np.mean(tops[kind] == tops["flat"]))
                row = {"n": n, "d": d, "index": kind, "build_s": build, "ms_per_query": per_query,
                       "speedup": timings["flat"] / per_query, "recall_vs_exact": rec}
                results.append(row)
                print(f"{n:>8} {d:>5} {kind:>6} {build:>8.1f} {per_query:>9.3f} {row['speedup']:>8.1f}x {rec:>13.3f}",
                      flush=True)
                del index
            del db, q
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
