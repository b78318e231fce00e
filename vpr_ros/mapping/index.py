"""faiss index construction for maps: exact inner product, HNSW, IVF, IVF-PQ.

Search ids are always positions in insertion order (keyframe ids). Exact and HNSW indexes
take vectors one by one; IVF variants are trained on the map's own descriptors when the index
is (re)built, so a map grows as exact/HNSW and is converted by :func:`build_index`.
"""
from __future__ import annotations

import math

import numpy as np

from vpr_ros.config import IndexConfig
from vpr_ros.errors import ConfigError, MapError


def choose_type(cfg: IndexConfig, count: int) -> str:
    """'auto' -> exact below ``cfg.auto_threshold`` keyframes, HNSW above; else as configured."""
    if cfg.index_type != "auto":
        return cfg.index_type
    return "flat" if count < cfg.auto_threshold else "hnsw"


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
        raise ConfigError(f"index_type '{kind}' is not one of flat, hnsw, ivf, ivfpq")
    if n:
        index.add(x)
    return index


def kind_of(index: object) -> str:
    """The index_type name of a faiss index."""
    import faiss

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


def set_search_params(index: object, cfg: IndexConfig) -> None:
    """Apply the search-time knobs (nprobe, efSearch) after loading."""
    import faiss

    if isinstance(index, faiss.IndexIVF):
        index.nprobe = cfg.ivf_nprobe
    elif isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = cfg.hnsw_ef_search


def search_params(index: object, before: int) -> object:
    """faiss search parameters that restrict a search to ids 0..before-1, keeping the index's own
    search-time knobs (efSearch, nprobe)."""
    import faiss

    sel = faiss.IDSelectorRange(0, int(before))
    if isinstance(index, faiss.IndexHNSW):
        return faiss.SearchParametersHNSW(sel=sel, efSearch=index.hnsw.efSearch)
    if isinstance(index, faiss.IndexIVF):
        return faiss.SearchParametersIVF(sel=sel, nprobe=index.nprobe)
    return faiss.SearchParameters(sel=sel)
