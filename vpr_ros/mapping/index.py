"""faiss index construction for maps: exact inner product, HNSW, IVF, IVF-PQ, and compact (IVF-PQ
codes whose shortlist the map re-ranks with its stored vectors), with memory estimates for each.

Search ids are always positions in insertion order (keyframe ids). Exact and HNSW indexes
take vectors one by one; IVF variants are trained on the map's own descriptors when the index
is (re)built, so a map grows as exact/HNSW and is converted by :func:`build_index`.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Sequence

import numpy as np

from vpr_ros.config import IndexConfig
from vpr_ros.errors import ConfigError, MapError


#: memory a keyframe's table entry takes in a node besides its index entry (Keyframe object: pose,
#: stamp, strings; measured: 700 MB for a million keyframes read from a store)
KEYFRAME_BYTES = 720
#: compact indexes are trained on at most this many stored vectors (a 10752-d sample: 704 MB float32)
COMPACT_TRAIN_MAX = 16384


def memory_estimate(kind: str, count: int, dim: int, cfg: IndexConfig) -> int:
    """Bytes a node holds for a map of ``count`` keyframes of dimension ``dim`` with index ``kind``
    (the index and the keyframe table; the network, ROS and the SQLite page cache not included)."""
    per, fixed = KEYFRAME_BYTES, 0
    # float32 vectors count twice in the exact kinds: faiss keeps them in a vector that doubles its
    # capacity as a writer adds to it (measured: a map builder's peak is 2x the index after one add)
    if kind in ("flat", "ivf"):
        per += 8 * dim + (8 if kind == "ivf" else 0)
        fixed += 4 * dim * (compact_layout(count, dim, cfg)[0] if kind == "ivf" else 0)
    elif kind == "hnsw":
        per += 8 * dim + 8 * cfg.hnsw_m + 16  # level-0 links (2 M int32) and upper levels
    elif kind in ("ivfpq", "compact"):
        nlist, m, coded = compact_layout(count, dim, cfg) if kind == "compact" else \
            (cfg.ivf_nlist or 1024, cfg.pq_m, dim)
        per += m + 8                             # code and id in its inverted list
        fixed += 4 * coded * (nlist + 256)       # coarse centroids and PQ codebooks
        fixed += 4 * coded * dim if coded < dim else 0  # the projection matrix
    else:
        raise ConfigError(f"index_type '{kind}' is not one of {', '.join(INDEX_KINDS)}")
    return fixed + per * int(count)


INDEX_KINDS = ("flat", "hnsw", "ivf", "ivfpq", "compact")


def choose_type(cfg: IndexConfig, count: int, dim: int | None = None, live: bool = False) -> str:
    """'auto' -> exact below :func:`exact_limit` keyframes, HNSW above (from the start for a
    ``live`` map, which searches itself as it grows: HNSW's cost grows with log N, exact search's
    with N), and 'compact' where the one picked would not fit ``cfg.memory_budget_mb`` (with ``dim``
    known); else as configured."""
    if cfg.index_type != "auto":
        return cfg.index_type
    kind = "hnsw" if live or count >= exact_limit(cfg, dim) else "flat"
    budget = cfg.memory_budget_mb << 20
    if dim is not None and memory_estimate(kind, count, dim, cfg) > budget:
        if kind == "flat" and memory_estimate("hnsw", count, dim, cfg) <= budget:
            return "hnsw"
        if count >= compact_min_count(count, dim, cfg):
            return "compact"
    return kind


def exact_limit(cfg: IndexConfig, dim: int | None) -> int:
    """Keyframes below which 'auto' searches exactly: ``cfg.auto_threshold`` for descriptors of up
    to 512 values, fewer for longer ones (exact search costs N x D: 50k x 512 is about 5 ms on 2
    cores, and so is 2380 x 10752)."""
    if dim is None or dim <= 512:
        return cfg.auto_threshold
    return max(1, cfg.auto_threshold * 512 // dim)


#: a compact index codes descriptors longer than this after a random orthogonal projection to it:
#: 8-bit PQ codes over 84-value sub-vectors (10752 / 128) keep too little of a place's signal (measured
#: on benchmarks/map_scale.py's clustered descriptors: the right place in the top 64 for 0.94 of the
#: queries at 40k keyframes, 0.815 at 100k), over 8-value ones (1024 / 128) they keep it (1.000)
COMPACT_CODED_DIM = 1024


def compact_layout(count: int, dim: int, cfg: IndexConfig) -> tuple[int, int, int]:
    """(IVF cells, PQ sub-quantizers = bytes per code, dimension coded) of a compact index over
    ``count`` vectors of ``dim`` values."""
    nlist = cfg.ivf_nlist or int(min(1024, max(64, math.sqrt(max(count, 1)))))
    coded = min(dim, COMPACT_CODED_DIM)
    m = max(v for v in range(1, min(cfg.compact_bytes, coded) + 1) if coded % v == 0)
    return nlist, m, coded


def compact_min_count(count: int, dim: int, cfg: IndexConfig) -> int:
    """Vectors a compact index needs to train (its IVF cells and 256 PQ centroids per sub-space)."""
    return max(1024, compact_layout(count, dim, cfg)[0])


def compact_outgrown(index: object, count: int, cfg: IndexConfig) -> bool:
    """Whether a compact index trained for fewer keyframes should be retrained for ``count``: its
    IVF cells are half or less of what ``count`` gets (each cell then holds 4x what it was made
    for, and a search scans 4x more codes). Retraining at 4x growth costs a geometric series: the
    total work stays a few builds of the final map."""
    import faiss

    nlist = faiss.extract_index_ivf(index).nlist
    return compact_layout(count, index.d, cfg)[0] >= 2 * nlist  # type: ignore[attr-defined]


def build_compact(source: "Callable[[Sequence[int]], np.ndarray]", count: int, dim: int, cfg: IndexConfig,
                  progress: "Callable[[int], None] | None" = None) -> object:
    """A compact index (IVF-PQ, inner product) over ``count`` vectors read through ``source`` (ids
    -> float32 rows [len(ids), D]): trained on at most COMPACT_TRAIN_MAX of them (a fixed random
    sample), then filled in chunks, so at most one chunk and the sample are in memory."""
    import faiss

    nlist, m, coded = compact_layout(count, dim, cfg)
    if count < compact_min_count(count, dim, cfg):
        raise MapError(f"index_type 'compact' needs at least {compact_min_count(count, dim, cfg)} keyframes to "
                       f"train, the map has {count}")
    ivf = faiss.IndexIVFPQ(faiss.IndexFlatIP(coded), coded, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.min_points_per_centroid = ivf.pq.cp.min_points_per_centroid = 1  # small maps: fewer is fine
    ivf.nprobe = cfg.ivf_nprobe
    index = ivf
    if coded < dim:  # inner products are kept in expectation (scaled by coded / dim): the ranking is
        projection = faiss.RandomRotationMatrix(dim, coded)
        projection.init(20261206)  # fixed seed: the same map gives the same index
        index = faiss.IndexPreTransform(projection, ivf)
    ids = np.arange(count) if count <= COMPACT_TRAIN_MAX else \
        np.sort(np.random.default_rng(0).choice(count, COMPACT_TRAIN_MAX, replace=False))
    index.train(np.ascontiguousarray(source(ids.tolist()), np.float32))
    for a in range(0, count, 4096):
        index.add(np.ascontiguousarray(source(range(a, min(count, a + 4096))), np.float32))
        if progress is not None:
            progress(min(count, a + 4096))
    return index


def faiss_kind(kind: str) -> str:
    """The faiss index type (as :func:`kind_of` names it) an index_type is made of."""
    return "ivfpq" if kind == "compact" else kind


def empty_index(kind: str, dim: int, cfg: IndexConfig) -> object:
    """An index that accepts ``add`` right away (flat or HNSW)."""
    import faiss

    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = cfg.hnsw_ef_construction
        index.hnsw.efSearch = cfg.hnsw_ef_search
        return index
    raise ConfigError(f"index_type '{kind}' needs training: build it with build_index()")


def filled_flat(chunks: Iterable[np.ndarray], count: int, dim: int) -> object:
    """An exact index of ``count`` vectors given as float32 chunks [k, D], written into storage
    allocated once (adding chunk by chunk would let faiss's vector double, and hold two copies)."""
    import faiss

    index = faiss.IndexFlatIP(dim)
    if not count:
        return index
    index.codes.resize(count * dim * 4)
    view = faiss.rev_swig_ptr(index.codes.data(), count * dim * 4).view(np.float32).reshape(count, dim)
    at = 0
    for x in chunks:
        view[at:at + len(x)] = x
        at += len(x)
    if at != count:
        raise MapError(f"filled_flat: {at} vectors for an index of {count}")
    index.ntotal = count
    return index


def build_index(vectors: np.ndarray, kind: str, cfg: IndexConfig) -> object:
    """An index of ``kind`` holding ``vectors`` [N, D] (ids 0..N-1); IVF kinds are trained on them."""
    import faiss

    x = np.ascontiguousarray(vectors, np.float32)
    n, d = x.shape
    if kind in ("flat", "hnsw"):
        index = empty_index(kind, d, cfg)
    elif kind in ("ivf", "ivfpq"):
        nlist = cfg.ivf_nlist or max(1, int(4 * math.sqrt(max(n, 1))))
        if n < nlist:
            raise MapError(f"index_type '{kind}' needs at least {nlist} keyframes to train, the map has {n}; "
                           "use 'flat' or 'hnsw' (or 'auto')")
        quantizer = faiss.IndexFlatIP(d)
        if kind == "ivf":
            index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            if d % cfg.pq_m:
                raise ConfigError(f"pq_m: {cfg.pq_m} must divide the descriptor dimension {d}")
            index = faiss.IndexIVFPQ(quantizer, d, nlist, cfg.pq_m, 8, faiss.METRIC_INNER_PRODUCT)
        sample = x if n <= 256 * nlist else x[np.random.default_rng(0).choice(n, 256 * nlist, replace=False)]
        index.train(sample)
        index.nprobe = cfg.ivf_nprobe
        index.quantizer_trains_alone = 0
    else:
        raise ConfigError(f"index_type '{kind}' is not one of flat, hnsw, ivf, ivfpq (compact: build_compact)")
    if n:
        index.add(x)
    return index


def kind_of(index: object) -> str:
    """The index_type name of a faiss index (of the index behind a projection: a compact one's)."""
    import faiss

    if isinstance(index, faiss.IndexPreTransform):
        index = faiss.downcast_index(index.index)
    for cls, name in ((faiss.IndexIVFPQ, "ivfpq"), (faiss.IndexIVFFlat, "ivf"), (faiss.IndexHNSWFlat, "hnsw"),
                      (faiss.IndexFlatIP, "flat")):
        if isinstance(index, cls):
            return name
    return type(index).__name__


def all_vectors(index: object, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Stored vectors start..stop-1 [n, D], all by default (exact for flat/HNSW/IVF-flat; PQ gives
    its approximation)."""
    import faiss

    n = index.ntotal  # type: ignore[attr-defined]
    stop = n if stop is None else min(stop, n)
    if isinstance(index, faiss.IndexIVF):
        index.make_direct_map()
    if stop <= start:
        return np.zeros((0, index.d), np.float32)  # type: ignore[attr-defined]
    return index.reconstruct_n(start, stop - start)  # type: ignore[attr-defined]


def vectors_by_id(index: object, ids: Iterable[int]) -> np.ndarray:
    """Stored vectors [len(ids), D] of any ids (in any order) of an exact index (flat, HNSW, IVF)."""
    import faiss

    if isinstance(index, faiss.IndexIVF):
        index.make_direct_map()
    return index.reconstruct_batch(np.asarray(list(ids), np.int64))  # type: ignore[attr-defined]


def set_search_params(index: object, cfg: IndexConfig) -> None:
    """Apply the search-time knobs (nprobe, efSearch) after loading."""
    import faiss

    if isinstance(index, faiss.IndexPreTransform):
        faiss.extract_index_ivf(index).nprobe = cfg.ivf_nprobe
    elif isinstance(index, faiss.IndexIVF):
        index.nprobe = cfg.ivf_nprobe
    elif isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = cfg.hnsw_ef_search


def search_params(index: object, before: int) -> object:
    """faiss search parameters that restrict a search to ids 0..before-1, keeping the index's own
    search-time knobs (efSearch, nprobe)."""
    import faiss

    sel = faiss.IDSelectorRange(0, int(before))
    if isinstance(index, faiss.IndexPreTransform):  # a compact index: the IVF behind the projection
        ivf = faiss.extract_index_ivf(index)
        return faiss.SearchParametersPreTransform(index_params=faiss.SearchParametersIVF(sel=sel, nprobe=ivf.nprobe))
    if isinstance(index, faiss.IndexHNSW):
        return faiss.SearchParametersHNSW(sel=sel, efSearch=index.hnsw.efSearch)
    if isinstance(index, faiss.IndexIVF):
        return faiss.SearchParametersIVF(sel=sel, nprobe=index.nprobe)
    return faiss.SearchParameters(sel=sel)
