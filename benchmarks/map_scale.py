"""How the map design scales (issue 34), v0.4's design and this one side by side: disk, start-up,
memory, search and add time, and recall, for maps of N synthetic keyframes at the default model's
10752 dimensions and at PCA 512.

Each map holds N keyframes as the map builder stores them: clustered unit descriptors (places seen
20 times each, as live_map.py makes them) and ~11.6 KB of SIFT features per keyframe (85 features:
keypoints float32 + descriptors uint8).

* today (v0.4, run from ``git archive`` of --baseline-rev in a folder of its own): built by the
  offline builder's path (everything in memory, one transaction; the index 'auto' picks: exact
  below 50k keyframes, HNSW above); every descriptor float32 in the store and in memory.
* new: built by a durable writer in chunks (as the map builder node commits; nothing held in memory
  but the index), the index 'auto' picks under the default memory budget (1024 MiB): flat / HNSW
  where they fit, else compact (IVF-PQ codes in memory, the top 64 re-ranked with the stored float16
  vectors); the localizer loads it as the node does (local features checked when read).

Then, each in its own process so that its peak resident memory is its own:

* the localizer's start-up: map load to the first answer, its peak RSS (the map only; the
  network's, measured once with --network, comes on top), search time per query (median of 200 new
  views of known places) and Recall@1 / @5 (the query's place among the top 1 / 5) against exact
  search over the same stored descriptors (computed in chunks after the measurement);
* the map builder: the map opened for writing (durable, every checksum and the file structure
  checked, as the node opens it), 50 keyframes added one by one (each committed), median add time
  per keyframe and peak RSS.

Printed as one row per (dimension, size, design); a size that does not fit is reported with the reason.

    python benchmarks/map_scale.py [--dims 512 10752] [--sizes 10000 100000] [--designs today new]
                                   [--network] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import os
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


def _add_chunks(vmap, root: Path, n: int, d: int):  # type: ignore[no-untyped-def]
    """Add the ``n`` keyframes to ``vmap`` CHUNK at a time (the place of each saved beside ``root``
    for the recall check); yields (first, end) after each chunk. Both designs' builds use it, so
    they store the same keyframes."""
    from vpr_ros.geometry import planar_pose
    from vpr_ros.mapping.map_store import Keyframe

    rng = np.random.default_rng(7)
    places = _places(n, d)
    for i in range(0, n, CHUNK):
        j = min(n, i + CHUNK)
        which = rng.integers(0, len(places), j - i)
        vmap.add(_descriptors(rng, places, which), [Keyframe(float(k), planar_pose(k, 0.0)) for k in range(i, j)],
                 _features(rng, j - i))
        np.save(root.parent / f"{root.name}-places-{i}.npy", which)
        yield i, j


def build(root: Path, n: int, d: int) -> float:
    """v0.4's offline build of ``n`` keyframes (in memory, saved at the end); returns its seconds."""
    from vpr_ros.config import IndexConfig
    from vpr_ros.mapping.index import choose_type
    from vpr_ros.mapping.map_store import ModelIdentity, VprMap

    t0 = time.perf_counter()
    vmap = VprMap.create(ModelIdentity("bench", "ab" * 32, 224, d))
    for _ in _add_chunks(vmap, root, n, d):
        pass
    kind = choose_type(IndexConfig(), n)  # as the map builder saves it
    if kind != vmap.manifest.index_type:
        vmap.reindex(kind, IndexConfig())
    vmap.save(root)
    vmap.close()
    return time.perf_counter() - t0


def build_new(root: Path, n: int, d: int) -> float:
    """This design's build: a durable writer commits chunks of keyframes; once enough are stored to
    train, the index becomes the kind 'auto' picks for ``n`` under the default budget (as the map
    builder's saves convert it); an index snapshot at the end. Returns its seconds."""
    from vpr_ros.config import IndexConfig
    from vpr_ros.mapping.index import COMPACT_TRAIN_MAX, choose_type
    from vpr_ros.mapping.map_store import ModelIdentity, VprMap

    cfg = IndexConfig()
    kind = choose_type(cfg, n, d)
    t0 = time.perf_counter()
    vmap = VprMap.open_writer(root, ModelIdentity("bench", "ab" * 32, 224, d), durable=True)
    vmap.search_cfg = cfg
    for i, j in _add_chunks(vmap, root, n, d):
        if kind != vmap.manifest.index_type and (j >= min(n, COMPACT_TRAIN_MAX) or kind != "compact"):
            vmap.reindex(kind, cfg)
        if (i // CHUNK) % 20 == 19:  # the node's autosave: an index snapshot (and a compact index retrained as it grows)
            vmap.save()
        print(f"  built {j}/{n} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    vmap.save()
    vmap.close()
    return time.perf_counter() - t0


def _place_of(root: Path, n: int) -> np.ndarray:
    return np.concatenate([np.load(root.parent / f"{root.name}-places-{i}.npy") for i in range(0, n, CHUNK)])


def child_load(root: Path, n: int, d: int, design: str) -> dict:
    """The localizer's side: load to first answer, RSS, search time, recall against exact search."""
    from vpr_ros.mapping.map_store import VprMap

    rng = np.random.default_rng(1)
    places = _places(n, d)
    place_of = _place_of(root, n)
    want = place_of[rng.integers(0, n, 200)]
    queries = _descriptors(rng, places, want)
    del places  # the place centres (2 GB at 1M x 10752) are the benchmark's, not the localizer's
    _reset_peak()
    t0 = time.perf_counter()
    if design == "new":  # as the localizer node loads it
        vmap = VprMap.load(root, verify_features=False, memory_budget_mb=1024)
    else:
        vmap = VprMap.load(root)
    vmap.search(queries[:1], 5)
    startup = time.perf_counter() - t0
    rss = _rss_peak()
    times, ids = [], []
    for q in queries:
        t = time.perf_counter()
        _, found = vmap.search(q[None], 5)
        times.append((time.perf_counter() - t) * 1e3)
        ids.append(found[0])
    kind = "compact" if getattr(vmap, "reranks", False) else vmap.manifest.index_type
    truth = _exact_top5(vmap, queries, n)
    got = np.array(ids)
    hit = lambda r, k: np.mean([place_of[r[i, 0]] == want[i] if k == 1 else (place_of[r[i, :k]] == want[i]).any()
                                for i in range(len(r))])
    return {"startup_s": startup, "rss_mib": rss, "search_ms": statistics.median(times),
            "index": kind, "recall1": hit(got, 1), "recall1_exact": hit(truth, 1),
            "recall5": hit(got, 5), "recall5_exact": hit(truth, 5)}


def _exact_top5(vmap, queries: np.ndarray, n: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Exact top-5 ids [M, 5] over the map's stored descriptors, read in chunks."""
    best_s = np.full((len(queries), 5), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 5), np.int64)
    for a in range(0, n, 8192):
        chunk = vmap.descriptors(a, min(n, a + 8192))
        s = queries @ chunk.T
        cat_s = np.concatenate([best_s, s], axis=1)
        cat_i = np.concatenate([best_i, np.broadcast_to(np.arange(a, a + len(chunk)), s.shape)], axis=1)
        top = np.argsort(-cat_s, axis=1, kind="stable")[:, :5]
        best_s, best_i = np.take_along_axis(cat_s, top, 1), np.take_along_axis(cat_i, top, 1)
    return best_i


def _reset_peak() -> None:
    """Start VmHWM again from the current resident size (Linux: clear_refs 5), so that the peak is
    the map's, not the benchmark's set-up (its place centres)."""
    import gc

    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _rss_peak() -> float:
    """Peak resident memory (MiB) of this process (VmHWM: not the parent's peak before exec)."""
    with open("/proc/self/status") as f:
        return int(f.read().split("VmHWM:")[1].split()[0]) / 1024


def child_write(root: Path, n: int, d: int, design: str) -> dict:
    """The map builder's side: open for writing (durable), 50 keyframes added one by one."""
    from vpr_ros.geometry import planar_pose
    from vpr_ros.mapping.map_store import Keyframe, ModelIdentity, VprMap

    rng = np.random.default_rng(2)
    places = _places(n, d)
    new = [_descriptors(rng, places, rng.integers(0, len(places), 1)) for _ in range(50)]
    del places  # the benchmark's, not the map builder's
    _reset_peak()
    t0 = time.perf_counter()
    vmap = VprMap.open_writer(root, ModelIdentity("bench", "ab" * 32, 224, d), durable=True)
    open_s = time.perf_counter() - t0
    times = []
    for k in range(50):
        x = new[k]
        t = time.perf_counter()
        vmap.add(x, [Keyframe(float(n + k), planar_pose(n + k, 0.0))], _features(rng, 1))
        times.append((time.perf_counter() - t) * 1e3)
    vmap.close()
    return {"open_s": open_s, "add_ms": statistics.median(times), "rss_mib": _rss_peak()}


def child_build(root: Path, n: int, d: int, design: str) -> dict:
    return {"build_s": (build_new if design == "new" else build)(root, n, d)}


CHILDREN = {"load": child_load, "write": child_write, "build": child_build}


def _child(kind: str, root: Path, n: int, d: int, design: str, src: Path | None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    if src is not None:  # v0.4's package first on the path
        env["PYTHONPATH"] = os.pathsep.join([str(src), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    r = subprocess.run([sys.executable, __file__, "--child", kind, str(root), str(n), str(d), design],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def _drop_cached(root: Path) -> None:
    """Drop the map's files from the page cache (POSIX_FADV_DONTNEED after an fsync: no privilege
    needed), so that start-up and search read from the disk as after a reboot."""
    for p in root.iterdir():
        if p.is_file() and not p.is_symlink():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _baseline_source(rev: str, into: Path) -> Path:
    """v0.4's package (``git archive`` of ``rev``'s vpr_ros/) in ``into``; checks it is not this one."""
    repo = Path(__file__).resolve().parent.parent
    into.mkdir(parents=True, exist_ok=True)
    if not (into / "vpr_ros").is_dir():
        archive = subprocess.run(["git", "-C", str(repo), "archive", rev, "vpr_ros"], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    text = (into / "vpr_ros" / "mapping" / "store" / "map_types.py").read_text()
    if "FORMAT_VERSION = 2" not in text:
        raise SystemExit(f"--baseline-rev {rev}: not v0.4's map store (format 2)")
    return into


def _network_rss(cache: Path) -> str:
    """Peak RSS of the default model (models/d2vpr_student.yaml) on ONNX Runtime, 2 threads, batch 8."""
    from backend_speed import peak_memory_child  # benchmarks/ is on the path when run as a script

    from vpr_ros.config import model_config_from
    from vpr_ros.runtime.factory import onnx_for

    model = str(Path(__file__).resolve().parent.parent / "models" / "d2vpr_student.yaml")
    try:
        onnx_for(model_config_from(model), str(cache))  # exported here (torch), so the child runs ONNX Runtime only
        return f"{peak_memory_child('onnxruntime', model, 2, str(cache)):.0f} MiB"
    except subprocess.CalledProcessError as exc:
        return f"not measured ({(exc.stderr or '').strip().splitlines()[-1:] or exc})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", type=int, nargs="+", default=[512, 10752])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10000, 100000])
    ap.add_argument("--designs", nargs="+", default=["today", "new"], choices=["today", "new"])
    ap.add_argument("--baseline-rev", default="ff70f34", help="the commit whose map store is 'today' (v0.4)")
    ap.add_argument("--network", action="store_true", help="also measure the default network's memory")
    ap.add_argument("--keep", default="", help="build the maps here and keep them (default: a temporary folder)")
    ap.add_argument("--child", nargs=5, metavar=("KIND", "MAP", "N", "D", "DESIGN"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        kind, root, n, d, design = a.child
        print(json.dumps(CHILDREN[kind](Path(root), int(n), int(d), design)))
        return 0
    tmp = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="vpr_map_scale_"))
    tmp.mkdir(parents=True, exist_ok=True)
    src = _baseline_source(a.baseline_rev, tmp / "v04-src") if "today" in a.designs else None
    if a.network:
        print(f"network: default model on ONNX Runtime (CPU, 2 threads, batch 8): peak RSS {_network_rss(tmp / 'cache')}",
              flush=True)
    for d in a.dims:
        for n in a.sizes:
            for design in a.designs:
                label = f"d={d:5d} N={n:8d} {design:5s}"
                avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
                disk_free = shutil.disk_usage(tmp).free
                if design == "today":
                    need = n * (d * 4 + FEATURES * 136) * 2.2  # the arrays, the store's copy and the index at once
                    if need > avail:
                        print(f"{label}: not built: v0.4 holds every descriptor in memory; about {need / 2**30:.0f} "
                              f"GiB needed, {avail / 2**30:.0f} GiB available", flush=True)
                        continue
                disk_need = n * ((4 if design == "today" else 2) * d + FEATURES * 136 + 300) * 1.15
                if disk_need > disk_free:
                    print(f"{label}: not built: about {disk_need / 2**30:.0f} GiB of disk needed, "
                          f"{disk_free / 2**30:.0f} GiB free", flush=True)
                    continue
                root = tmp / f"map-{n}-{d}-{design}"
                shutil.rmtree(root, ignore_errors=True)  # a kept map of an earlier run
                built = _child("build", root, n, d, design, src if design == "today" else None)
                if "error" in built:
                    print(f"{label}: build failed: {built['error']}", flush=True)
                    continue
                disk = sum(p.stat().st_size for p in root.iterdir() if p.is_file())
                _drop_cached(root)  # a robot's boot: nothing of the map in the page cache
                load = _child("load", root, n, d, design, src if design == "today" else None)
                write = _child("write", root, n, d, design, src if design == "today" else None)
                if "error" in load or "error" in write:
                    print(f"{label}: {load.get('error') or write.get('error')}", flush=True)
                else:
                    print(f"{label}: disk {disk / 2**20:8.0f} MiB ({disk / n / 1024:.1f} KiB/keyframe); "
                          f"localizer: start-up {load['startup_s']:.1f} s, RSS {load['rss_mib']:.0f} MiB (map only; cold cache), "
                          f"search {load['search_ms']:.2f} ms/query ({load['index']}), Recall@1 {load['recall1']:.3f} "
                          f"vs exact {load['recall1_exact']:.3f}, Recall@5 {load['recall5']:.3f} vs "
                          f"{load['recall5_exact']:.3f}; map builder: open {write['open_s']:.1f} s, add "
                          f"{write['add_ms']:.1f} ms/keyframe, RSS {write['rss_mib']:.0f} MiB; built in "
                          f"{built['build_s']:.0f} s", flush=True)
                if not a.keep:
                    shutil.rmtree(root, ignore_errors=True)
                    for p in tmp.glob(f"{root.name}-places-*.npy"):
                        p.unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
