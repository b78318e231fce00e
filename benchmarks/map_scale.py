"""How today's map design scales (issue 34, "measured first"): disk, start-up, memory, search and add
time, and recall, for maps of N synthetic keyframes at the model's 10752 dimensions and at PCA 512.

Each map holds N keyframes as the map builder stores them: clustered unit descriptors (places seen
20 times each, as live_map.py makes them) and ~11.5 KB of SIFT features per keyframe (85 features:
keypoints float32 + descriptors uint8), written by the offline builder's path (one transaction, the
index snapshot the 'auto' index kind chooses: exact below 50k keyframes, HNSW above). Then, each in
its own process so that its peak resident memory is its own:

* the localizer's start-up: map load (every checksum) to the first answer, its peak RSS (the map
  only: the network's memory is not included), search time per query (median of 200 new views of
  known places) and Recall@1 / @5 against exact search on the same descriptors;
* the map builder: the map opened for writing (durable, as the node opens it), 50 keyframes added one
  by one (each committed), median add time per keyframe and peak RSS.

Printed as one row per (dimension, size); a size that does not fit is reported with the reason.

    python benchmarks/map_scale.py [--dims 512 10752] [--sizes 10000 100000] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

VIEWS = 20            # views per place
FEATURES = 85         # SIFT features per keyframe: 85 x (8 + 128) bytes = 11.6 KB
CHUNK = 5000


def _descriptors(rng: np.random.Generator, places: np.ndarray, which: np.ndarray) -> np.ndarray:
    x = places[which] + 0.6 * rng.standard_normal((len(which), places.shape[1]), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _places(n: int, d: int) -> np.ndarray:
    return np.random.default_rng(n + d).standard_normal((max(1, n // VIEWS), d), dtype=np.float32)


def _features(rng: np.random.Generator, count: int) -> list:
    from vpr_ros.verification.features import LocalFeatures

    return [LocalFeatures("sift", rng.uniform(0, 640, (FEATURES, 2)).astype(np.float32),
                          rng.integers(0, 256, (FEATURES, 128), dtype=np.uint8), (640, 480)) for _ in range(count)]


def build(root: Path, n: int, d: int) -> float:
    """Write the map of ``n`` keyframes; returns the seconds it took."""
    from vpr_ros.config import IndexConfig
    from vpr_ros.geometry import planar_pose
    from vpr_ros.mapping.index import choose_type
    from vpr_ros.mapping.map_store import Keyframe, ModelIdentity, VprMap

    rng = np.random.default_rng(7)
    places = _places(n, d)
    t0 = time.perf_counter()
    vmap = VprMap.create(ModelIdentity("bench", "ab" * 32, 224, d))
    for i in range(0, n, CHUNK):
        j = min(n, i + CHUNK)
        which = rng.integers(0, len(places), j - i)
        vmap.add(_descriptors(rng, places, which), [Keyframe(float(k), planar_pose(k, 0.0)) for k in range(i, j)],
                 _features(rng, j - i))
        np.save(root.parent / f"{root.name}-places-{i}.npy", which)
    kind = choose_type(IndexConfig(), n)  # as the map builder saves it
    if kind != vmap.manifest.index_type:
        vmap.reindex(kind, IndexConfig())
    vmap.save(root)
    vmap.close()
    return time.perf_counter() - t0


def _place_of(root: Path, n: int) -> np.ndarray:
    return np.concatenate([np.load(root.parent / f"{root.name}-places-{i}.npy") for i in range(0, n, CHUNK)])


def child_load(root: Path, n: int, d: int) -> dict:
    """The localizer's side: load to first answer, RSS, search time, recall against exact search."""
    import faiss

    from vpr_ros.mapping.map_store import VprMap

    rng = np.random.default_rng(1)
    places = _places(n, d)
    place_of = _place_of(root, n)
    want = place_of[rng.integers(0, n, 200)]
    queries = _descriptors(rng, places, want)
    t0 = time.perf_counter()
    vmap = VprMap.load(root)
    vmap.search(queries[:1], 5)
    startup = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times, ids = [], []
    for q in queries:
        t = time.perf_counter()
        _, found = vmap.search(q[None], 5)
        times.append((time.perf_counter() - t) * 1e3)
        ids.append(found[0])
    exact = faiss.IndexFlatIP(d)
    exact.add(vmap.descriptors())
    _, truth = exact.search(queries, 5)
    got = np.array(ids)
    hit = lambda r, k: np.mean([place_of[r[i, 0]] == want[i] if k == 1 else (place_of[r[i, :k]] == want[i]).any()
                                for i in range(len(r))])
    return {"startup_s": startup, "rss_mib": rss, "search_ms": statistics.median(times),
            "index": vmap.manifest.index_type, "recall1": hit(got, 1), "recall1_exact": hit(truth, 1),
            "recall5": hit(got, 5), "recall5_exact": hit(truth, 5)}


def child_write(root: Path, n: int, d: int) -> dict:
    """The map builder's side: open for writing (durable), 50 keyframes added one by one."""
    from vpr_ros.geometry import planar_pose
    from vpr_ros.mapping.map_store import Keyframe, ModelIdentity, VprMap

    rng = np.random.default_rng(2)
    places = _places(n, d)
    t0 = time.perf_counter()
    vmap = VprMap.open_writer(root, ModelIdentity("bench", "ab" * 32, 224, d), durable=True)
    open_s = time.perf_counter() - t0
    times = []
    for k in range(50):
        x = _descriptors(rng, places, rng.integers(0, len(places), 1))
        t = time.perf_counter()
        vmap.add(x, [Keyframe(float(n + k), planar_pose(n + k, 0.0))], _features(rng, 1))
        times.append((time.perf_counter() - t) * 1e3)
    vmap.close()
    return {"open_s": open_s, "add_ms": statistics.median(times),
            "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _child(kind: str, root: Path, n: int, d: int) -> dict:
    r = subprocess.run([sys.executable, __file__, "--child", kind, str(root), str(n), str(d)],
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", type=int, nargs="+", default=[512, 10752])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10000, 100000])
    ap.add_argument("--keep", default="", help="build the maps here and keep them (default: a temporary folder)")
    ap.add_argument("--child", nargs=4, metavar=("KIND", "MAP", "N", "D"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        kind, root, n, d = a.child
        fn = child_load if kind == "load" else child_write
        print(json.dumps(fn(Path(root), int(n), int(d))))
        return 0
    tmp = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="vpr_map_scale_"))
    tmp.mkdir(parents=True, exist_ok=True)
    for d in a.dims:
        for n in a.sizes:
            need = n * (d * 4 + FEATURES * 136) * 2.2  # the arrays, the store's copy and the index, in memory at once
            avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
            if need > avail:
                print(f"d={d:5d} N={n:8d}: not built: today's design holds every descriptor in memory; about "
                      f"{need / 2**30:.0f} GiB needed, {avail / 2**30:.0f} GiB available", flush=True)
                continue
            root = tmp / f"map-{n}-{d}"
            build_s = build(root, n, d)
            disk = sum(p.stat().st_size for p in root.iterdir() if p.is_file())
            load, write = _child("load", root, n, d), _child("write", root, n, d)
            if "error" in load or "error" in write:
                print(f"d={d:5d} N={n:8d}: {load.get('error') or write.get('error')}", flush=True)
                continue
            print(f"d={d:5d} N={n:8d}: disk {disk / 2**20:8.0f} MiB ({disk / n / 1024:.1f} KiB/keyframe); "
                  f"localizer: start-up {load['startup_s']:.1f} s, RSS {load['rss_mib']:.0f} MiB (map only), "
                  f"search {load['search_ms']:.2f} ms/query ({load['index']}), Recall@1 {load['recall1']:.3f} vs "
                  f"exact {load['recall1_exact']:.3f}, Recall@5 {load['recall5']:.3f} vs {load['recall5_exact']:.3f}; "
                  f"map builder: open {write['open_s']:.1f} s, add {write['add_ms']:.1f} ms/keyframe, RSS "
                  f"{write['rss_mib']:.0f} MiB; built in {build_s:.0f} s", flush=True)
            if not a.keep:
                shutil.rmtree(root, ignore_errors=True)
                for p in tmp.glob(f"{root.name}-places-*.npy"):
                    p.unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
