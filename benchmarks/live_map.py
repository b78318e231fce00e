"""Live loop closure's cost per keyframe as the map grows: search + add + bookkeeping (excluding
the network) at 1k / 10k / 100k keyframes, at PCA 512 and at the model's 10752 dimensions.

For each size, a durable map store (format 2) holds N synthetic keyframes (clustered unit
descriptors: places seen 20 times each, as along a robot's repeated routes) with their HNSW index
(the index live mode grows online). Then 200 new keyframes, each a new view of a known place, are
processed as the map builder node does: the accepted frame's raw 640x480 rgb8 image is committed
(fsynced), the keyframes older than the exclusion window are searched (an id range inside the
search), the encoded keyframe is committed in place of the pending frame and added to the index.
Printed: median milliseconds per keyframe for the index alone (search + add) and for the whole
step (with the two durable commits), the index's memory per keyframe, and Recall@1 (the top-1
is a view of the query's place) of the HNSW search beside exact search on the same exclusion.
Target (live loop closure issue): time within 2x from 1k to 100k, Recall@1 loss <= 2%.

    python benchmarks/live_map.py [--dims 512 10752] [--sizes 1000 10000 100000] [--new 200]
"""
from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


VIEWS = 20  # views per place


def descriptors(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n unit vectors, their place ids): places of VIEWS views each, view noise 0.6 per value."""
    rng = np.random.default_rng(seed)
    places = rng.standard_normal((max(1, n // VIEWS), d), dtype=np.float32)
    place_of = rng.integers(0, len(places), n)
    x = np.empty((n, d), np.float32)
    for i in range(0, n, 20_000):  # in blocks: bounded temporary memory
        j = min(n, i + 20_000)
        x[i:j] = places[place_of[i:j]] + 0.6 * rng.standard_normal((j - i, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, place_of


def measure(n: int, d: int, new: int, exclude: int, tmp: Path) -> dict[str, float]:
    import faiss

    from vpr_ros.geometry import planar_pose
    from vpr_ros.mapping.map_store import Keyframe, ModelIdentity, VprMap
    from vpr_ros.mapping.store.pending import PendingFrame, RawImage

    faiss.omp_set_num_threads(2)
    base, place_of = descriptors(n, d, seed=n + d)
    model = ModelIdentity("bench", "ab" * 32, 224, d)
    t0 = time.perf_counter()
    m = VprMap.create(model)
    m.reindex("hnsw")  # the index grows online from the first keyframe, as in live mode
    m.add(base, [Keyframe(float(i), planar_pose(i, 0.0)) for i in range(n)])
    m.save(tmp / f"map-{n}-{d}")  # one transaction, with an HNSW snapshot
    del m
    vmap = VprMap.open_writer(tmp / f"map-{n}-{d}", model, durable=True)  # as the node opens it
    build_s = time.perf_counter() - t0
    exact = faiss.IndexFlatIP(d)
    exact.add(base)
    del base
    # new keyframes: new views of places seen before the exclusion window
    rng = np.random.default_rng(1)
    places = np.random.default_rng(n + d).standard_normal((max(1, n // VIEWS), d), dtype=np.float32)
    want = place_of[rng.integers(0, n - exclude, new)]
    revisit = places[want] + 0.6 * rng.standard_normal((new, d), dtype=np.float32)
    revisit /= np.linalg.norm(revisit, axis=1, keepdims=True)
    image = RawImage(bytes(640 * 480 * 3), "rgb8", 480, 640, 640 * 3)
    rss0 = rss_mib()
    steps: dict[str, list[float]] = {"pending": [], "search": [], "add": [], "index": [], "total": []}
    hits = {"hnsw": 0, "exact": 0}
    for k in range(new):
        q = revisit[k:k + 1]
        i = len(vmap)
        kf = Keyframe(float(i), planar_pose(i, 0.0))
        t = time.perf_counter()
        seq = vmap.add_pending(PendingFrame(kf, image))             # the image callback's commit
        t1 = time.perf_counter()
        _, ids = vmap.search(q, 20, before=i - exclude)          # older than the exclusion window
        t2 = time.perf_counter()
        vmap.add(q, [kf], done_pending=[seq])                     # durable commit, then the index grows
        t3 = time.perf_counter()
        _, truth = exact.search(q, 1, params=faiss.SearchParameters(sel=faiss.IDSelectorRange(0, i - exclude)))
        exact.add(q)
        hits["hnsw"] += int(place_of[ids[0, 0]] == want[k])
        hits["exact"] += int(place_of[truth[0, 0]] == want[k])
        place_of = np.append(place_of, want[k])
        for name, dt in (("pending", t1 - t), ("search", t2 - t1), ("add", t3 - t2), ("total", t3 - t)):
            steps[name].append(dt * 1e3)
        steps["index"].append((t2 - t1) * 1e3)
    # the index alone: search + add of the same vectors again, without the store
    for k in range(new):
        q = revisit[k:k + 1]
        t = time.perf_counter()
        vmap.index.search(q, 20)
        vmap.index.add(q)
        steps["index"][k] = (time.perf_counter() - t) * 1e3
    vmap.close()
    out = {f"{k}_ms": statistics.median(v) for k, v in steps.items()}
    out.update(recall=hits["hnsw"] / new, recall_exact=hits["exact"] / new, build_s=build_s,
               rss_per_kf_kib=(rss_mib() - rss0) / new * 1024,
               index_bytes_per_kf=faiss.serialize_index(vmap.index).nbytes / len(vmap))
    import shutil

    shutil.rmtree(tmp / f"map-{n}-{d}", ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", type=int, nargs="+", default=[512, 10752])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--new", type=int, default=200, help="keyframes processed per size")
    ap.add_argument("--exclude", type=int, default=30, help="newest keyframes skipped (the exclusion window)")
    a = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="vpr_live_map_"))
    for d in a.dims:
        rows = {}
        for n in a.sizes:
            r = rows[n] = measure(n, d, a.new, a.exclude, tmp)
            print(f"d={d:5d} N={n:6d}: {r['total_ms']:.2f} ms/keyframe in all (image commit {r['pending_ms']:.2f}, "
                  f"search {r['search_ms']:.2f}, keyframe commit + index add {r['add_ms']:.2f}); the index alone "
                  f"(search + add) {r['index_ms']:.2f} ms; Recall@1 HNSW {r['recall']:.3f} vs exact "
                  f"{r['recall_exact']:.3f}; index {r['index_bytes_per_kf'] / 1024:.1f} KiB/keyframe; "
                  f"map of {n} built in {r['build_s']:.0f} s", flush=True)
        lo, hi = rows[min(a.sizes)], rows[max(a.sizes)]
        loss = max(r["recall_exact"] - r["recall"] for r in rows.values())
        print(f"d={d}: from {min(a.sizes)} to {max(a.sizes)} keyframes the whole step takes "
              f"{hi['total_ms'] / lo['total_ms']:.2f}x as long (target <= 2x), the index alone "
              f"{hi['index_ms'] / lo['index_ms']:.2f}x; Recall@1 loss against exact search at most {loss:.3f} "
              "(target <= 0.02)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
