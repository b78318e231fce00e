"""Evaluate a model on a dataset: descriptors (cached), exact search, Recall@N, PR, outputs.

Used by the ``vpr_ros_eval`` command and by training validation. The same preprocessing and
backends as the nodes.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from vpr_ros.datasets import EvalDataset, fingerprint_files, read_rgb
from vpr_ros.errors import DatasetError, VprError
from vpr_ros.evaluation import PrCurve, precision_recall, recall_at_n
from vpr_ros.files import replaced_atomically
from vpr_ros.pca import Pca
from vpr_ros.runtime.base import DescriptorBackend
from vpr_ros.runtime.preprocess import preprocess_batch

if TYPE_CHECKING:
    from vpr_ros.config import VerificationConfig

RECALL_NS = (1, 5, 10, 20)


@dataclass
class EvalResult:
    """Everything measured in one evaluation."""

    recalls: dict[int, float]
    pr: PrCurve
    ranked: np.ndarray          # int [Q, K] database ids, best first
    scores: np.ndarray          # float [Q, K] cosine similarities
    timings: dict[str, float] = field(default_factory=dict)
    cached: bool = False


#: images per descriptor-cache chunk: a failure late in a long run loses at most one chunk
CHUNK = 512


def describe_images(backend: DescriptorBackend, paths: Sequence[Path], batch_size: int = 16,
                    progress: bool = False, desc: str = "images", bar: object | None = None) -> np.ndarray:
    """Descriptors [N, D] of image files, in order. A descriptor with NaN/inf (broken weights) is
    a DatasetError naming the image, raised at the first batch that has one."""
    if batch_size < 1:
        raise DatasetError(f"batch size must be at least 1, got {batch_size}")
    own_bar = None
    if progress and bar is None:
        from tqdm import tqdm

        bar = own_bar = tqdm(total=len(paths), desc=desc, unit="img")
    try:
        out = []
        for i in range(0, len(paths), batch_size):
            chunk = paths[i:i + batch_size]
            d = backend.infer(preprocess_batch([read_rgb(p) for p in chunk], backend.input_size))
            bad = np.flatnonzero(~np.isfinite(d).all(axis=1))
            if bad.size:
                raise DatasetError(f"the model produced NaN/inf descriptors for {bad.size} of {len(chunk)} images "
                                   f"(first: {chunk[int(bad[0])]}); its weights ({backend.weights_source}) are "
                                   "probably broken")
            out.append(d)
            if bar is not None:
                bar.update(len(chunk))  # type: ignore[attr-defined]
    finally:
        if own_bar is not None:
            own_bar.close()
    return np.concatenate(out) if out else np.zeros((0, backend.descriptor_dim), np.float32)


def cache_key(backend: DescriptorBackend, dataset: EvalDataset, batch_size: int = 0) -> str:
    """Depends on the model (id, weights, input size), on how it runs (backend, precision, INT8
    mode, graph file content: :meth:`DescriptorBackend.numerics`), on every image file (name, size,
    mtime) and, for batch-dependent models, on the batch size."""
    batch = "" if backend.batch_independent else f"|batch={batch_size}"
    h = hashlib.sha256(f"{backend.model_id}|{backend.weights_sha256}|{backend.input_size}{batch}|"
                       f"{backend.numerics()}".encode())
    fingerprint_files(dataset.database, h)
    h.update(b"|queries|")
    return fingerprint_files(dataset.queries, h).hexdigest()[:20]


def _read_chunk(path: Path, rows: int, dim: int) -> np.ndarray | None:
    """A cached chunk if it is exactly what it should be (shape, dtype, finite), else None."""
    if not path.is_file():
        return None
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        print(f"[eval] cache chunk {path.name} unreadable ({exc}); recomputing", file=sys.stderr)
        return None
    if arr.shape != (rows, dim) or arr.dtype != np.float32 or not np.isfinite(arr).all():
        print(f"[eval] cache chunk {path.name} invalid (shape {arr.shape}, {arr.dtype}); recomputing", file=sys.stderr)
        return None
    return arr


def _write_atomic_npy(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.npy")
    try:
        np.save(tmp, arr, allow_pickle=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_or_describe(backend: DescriptorBackend, dataset: EvalDataset, batch_size: int,
                     cache_dir: Path | None, progress: bool) -> tuple[np.ndarray, np.ndarray, bool, float]:
    """(database [N, D], queries [M, D], all from cache?, seconds spent describing).

    With ``cache_dir``, descriptors are cached in chunks of :data:`CHUNK` images under
    ``<cache_dir>/<dataset>-<key>/`` (each chunk written atomically, validated when read), so an
    interrupted or failed run keeps what it computed. Every image still to be described is
    checked (readable, not truncated) before the network runs."""
    dim = backend.descriptor_dim
    folder = cache_dir / f"{dataset.name}-{cache_key(backend, dataset, batch_size)}" if cache_dir else None
    parts = {"database": dataset.database, "queries": dataset.queries}
    plan: dict[str, list[tuple[int, int, np.ndarray | None]]] = {}
    for part, paths in parts.items():
        plan[part] = []
        for start in range(0, len(paths), CHUNK):
            end = min(start + CHUNK, len(paths))
            cached = _read_chunk(folder / f"{part}-{start:07d}-{end:07d}.npy", end - start, dim) if folder else None
            plan[part].append((start, end, cached))
    todo = [p for part, paths in parts.items() for (s0, e0, c) in plan[part] if c is None for p in paths[s0:e0]]
    check_images(todo)
    if folder is not None and todo:
        folder.mkdir(parents=True, exist_ok=True)
    bar = None
    if progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="describing", unit="img")
    t0 = time.perf_counter()
    out: dict[str, np.ndarray] = {}
    try:
        for part, paths in parts.items():
            arrays = []
            for start, end, cached in plan[part]:
                if cached is None:
                    cached = describe_images(backend, paths[start:end], batch_size, bar=bar)
                    if folder is not None:
                        _write_atomic_npy(folder / f"{part}-{start:07d}-{end:07d}.npy", cached)
                arrays.append(cached)
            out[part] = np.concatenate(arrays) if arrays else np.zeros((0, dim), np.float32)
    finally:
        if bar is not None:
            bar.close()  # errors then print on a line of their own
    return out["database"], out["queries"], not todo, time.perf_counter() - t0


def check_images(paths: Sequence[Path]) -> None:
    """Every file exists, is not empty, and is not a truncated JPEG/PNG: checked before any
    inference, so a bad image at the end of a long dataset is found in seconds, not hours."""
    from vpr_ros.images import check_image_bytes

    bad: list[str] = []
    for p in paths:
        try:
            check_image_bytes(p.suffix.lstrip(".") or "file", p.read_bytes())
        except (OSError, VprError) as exc:
            bad.append(f"{p}: {getattr(exc, 'strerror', None) or exc}")
    if bad:
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        raise DatasetError(f"{len(bad)} image(s) cannot be used: " + "; ".join(bad[:3]) + more)


def evaluate_descriptors(db: np.ndarray, q: np.ndarray, positives: Sequence[set[int]],
                         k: int = max(RECALL_NS)) -> EvalResult:
    """Exact inner-product search + metrics (also used by training validation)."""
    import faiss

    index = faiss.IndexFlatIP(db.shape[1])
    index.add(np.ascontiguousarray(db, np.float32))
    t0 = time.perf_counter()
    scores, ranked = index.search(np.ascontiguousarray(q, np.float32), min(k, len(db)))
    search_s = time.perf_counter() - t0
    correct = np.array([int(r[0]) in pos for r, pos in zip(ranked, positives)])
    has_pos = np.array([bool(pos) for pos in positives])
    result = EvalResult(recall_at_n(ranked, positives, RECALL_NS),
                        precision_recall(scores[:, 0], correct, has_pos), ranked, scores)
    result.timings["search_ms_per_query"] = search_s * 1e3 / max(1, len(q))
    return result


def evaluate(dataset: EvalDataset, backend: DescriptorBackend, batch_size: int = 16,
             cache_dir: Path | None = None, pca: Pca | None = None, progress: bool = False,
             depth: int = max(RECALL_NS)) -> EvalResult:
    """Describe (or load cached descriptors), optionally apply PCA, search, score; each query's
    ranking keeps ``depth`` database entries (at least what re-ranking will look at)."""
    db, q, cached, seconds = load_or_describe(backend, dataset, batch_size, cache_dir, progress)
    if pca is not None:
        db, q = pca.apply(db), pca.apply(q)
    result = evaluate_descriptors(db, q, dataset.positives, max(depth, max(RECALL_NS)))
    result.cached = cached
    n = len(dataset.database) + len(dataset.queries)
    result.timings["describe_ms_per_image"] = seconds * 1e3 / n if not cached else float("nan")
    return result


def _json_safe(x: object) -> object:
    """NaN/inf -> None (JSON has no NaN), recursively."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def check_output_dir(out: Path) -> None:
    """The output folder can be created/written (checked before any work)."""
    if out.exists() and not out.is_dir():
        raise DatasetError(f"--output {out}: exists and is not a directory")
    probe = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if not os.access(probe, os.W_OK):
        raise DatasetError(f"--output {out}: {probe} is not writable")


@dataclass
class RerankSummary:
    """What re-ranking the global top-K by local matching changed."""

    features: str
    top_k: int
    recalls_before: dict[int, float]
    recalls_after: dict[int, float]
    verified: int              # top-1 matches with >= min_inliers geometric inliers
    verified_correct: int
    queries_with_positives: int
    ms_per_query: float
    local_scores: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # [Q, K] of the re-ranked order
    pr_global: "PrCurve | None" = None   # PR of the global top-1 scores (the ranking before)
    pr_local: "PrCurve | None" = None    # PR of the re-ranked top-1's local score
    min_score: int = 0                   # the threshold that made a top-1 'verified'

    @property
    def score_unit(self) -> str:
        return "mutual nearest neighbours" if self.features == "dense" else "inliers"

    @property
    def precision(self) -> float:
        return self.verified_correct / self.verified if self.verified else float("nan")

    @property
    def recall(self) -> float:
        return self.verified_correct / self.queries_with_positives if self.queries_with_positives else float("nan")


def rerank(result: EvalResult, dataset: EvalDataset, cfg: "VerificationConfig", progress: bool = False,
           cache_size: int = 4096, backend: DescriptorBackend | None = None) -> RerankSummary:
    """Re-rank each query's global top ``cfg.rerank_top_k`` by local matching and update ``result``
    in place (ranked, recalls): classical (inliers of a robust fundamental matrix; the datasets have
    no camera models) or dense (mutual nearest neighbours of the network's dense features, which
    ``backend`` computes). A top-1 scoring at least ``cfg.min_inliers`` counts as a verified loop
    closure."""
    from collections import OrderedDict

    from vpr_ros.verification.verifier import Verifier

    verifier = Verifier(cfg)
    cache: OrderedDict[int, object] = OrderedDict()
    if verifier.dense:
        if backend is None:
            raise ValueError("dense re-ranking needs the backend that computes the local features")
        verifier.check_backend(backend)

    def features_of(path: Path):  # type: ignore[no-untyped-def]
        rgb = read_rgb(path)
        local = None
        if verifier.dense:
            local = backend.infer_local(preprocess_batch([rgb], backend.input_size))[1][0]  # type: ignore[union-attr]
        return verifier.features(rgb, local)

    def db_features(i: int):  # type: ignore[no-untyped-def]
        if i in cache:
            cache.move_to_end(i)
            return cache[i]
        f = features_of(dataset.database[i])
        cache[i] = f
        if len(cache) > cache_size:
            cache.popitem(last=False)
        return f

    before = dict(result.recalls)
    k = min(cfg.rerank_top_k, result.ranked.shape[1])
    it = range(len(dataset.queries))
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=f"re-ranking top-{k} ({cfg.features})", unit="query")
    t0 = time.perf_counter()
    verified = correct = 0
    ranked, scores = result.ranked.copy(), result.scores.copy()
    local_scores = np.full((len(dataset.queries), k), np.nan)
    try:
        for qi in it:
            fq = features_of(dataset.queries[qi])
            cands = [int(c) for c in result.ranked[qi, :k] if c >= 0]
            local = [verifier.rerank_score(fq, db_features(c)) for c in cands]  # type: ignore[arg-type]
            order = sorted(range(len(cands)), key=lambda j: (-local[j], j))
            ranked[qi, :len(cands)] = [cands[j] for j in order]
            scores[qi, :len(cands)] = [result.scores[qi, j] for j in order]  # each id keeps its own global score
            local_scores[qi, :len(cands)] = [local[j] for j in order]
            if cands and local[order[0]] >= cfg.min_inliers:
                verified += 1
                correct += cands[order[0]] in dataset.positives[qi]
    finally:
        if progress:
            it.close()  # type: ignore[attr-defined]
    seconds = time.perf_counter() - t0
    pr_global = result.pr
    result.ranked, result.scores = ranked, scores
    result.recalls = recall_at_n(ranked, dataset.positives, RECALL_NS)
    has_pos = np.array([bool(p) for p in dataset.positives])
    top1_ok = np.array([int(r[0]) in p for r, p in zip(ranked, dataset.positives)])
    pr_local = precision_recall(np.nan_to_num(local_scores[:, 0], nan=-1.0) if k else np.zeros(len(ranked)),
                                top1_ok, has_pos)
    return RerankSummary(cfg.features, k, before, dict(result.recalls), verified, correct,
                         int(has_pos.sum()), seconds * 1e3 / max(1, len(dataset.queries)),
                         local_scores, pr_global, pr_local, cfg.min_inliers)


#: under the plot's title when the model's weights were randomly initialised (settings["random_weights"])
RANDOM_WEIGHTS_NOTE = "RANDOM WEIGHTS: these numbers say nothing about the method"


def write_outputs(result: EvalResult, dataset: EvalDataset, out: Path, title: str,
                  reranked: RerankSummary | None = None, settings: dict | None = None) -> list[Path]:
    """results.json, predictions.csv, pr_curve.csv and eval.png in ``out``. Each says which ranking
    it shows ('global', or re-ranked by local features: then the local score of every top-1 and the
    PR curve of those scores beside the global one); ``settings`` (dataset, model, backend, radius /
    tolerance, re-ranking...) go into results.json so a result can be reproduced from its files."""
    check_output_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    ranking = "global" if reranked is None else f"re-ranked by {reranked.features} {reranked.score_unit}"
    summary = {
        "dataset": dataset.name, "layout": dataset.layout, "database": len(dataset.database),
        "queries": len(dataset.queries), "model": title, "ranking": ranking,
        "recall": {f"R@{n}": v for n, v in result.recalls.items()},
        "pr_auc": result.pr.auc, "recall_at_100_precision": result.pr.recall_at_100_precision,
        "pr_of": "global top-1 cosine similarity",
        "timings": result.timings, "descriptors_from_cache": result.cached,
        "settings": settings or {},
    }
    if reranked is not None:
        pl = reranked.pr_local
        summary["rerank"] = {
            "features": reranked.features, "top_k": reranked.top_k, "score": reranked.score_unit,
            "verified_if_score_at_least": reranked.min_score,
            "recall_before": {f"R@{n}": v for n, v in reranked.recalls_before.items()},
            "recall_after": {f"R@{n}": v for n, v in reranked.recalls_after.items()},
            "verified_top1": reranked.verified, "verified_top1_correct": reranked.verified_correct,
            "loop_closure_precision": reranked.precision, "loop_closure_recall": reranked.recall,
            "pr_auc_local": pl.auc if pl else None,
            "recall_at_100_precision_local": pl.recall_at_100_precision if pl else None,
            "ms_per_query": reranked.ms_per_query}
    # each output replaces the previous run's whole or not at all (a full disk, Ctrl-C)
    with replaced_atomically(out / "results.json", VprError) as tmp:
        tmp.write_text(json.dumps(_json_safe(summary), indent=1, allow_nan=False))
    with replaced_atomically(out / "predictions.csv", VprError) as tmp, tmp.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["query", "query_image", "top1_db_id", "top1_image", "top1_global_score", "top1_local_score",
                    "correct", "ranking", "top5_db_ids"])
        rank_name = "global" if reranked is None else f"reranked_{reranked.features}"
        for i, (row, sc) in enumerate(zip(result.ranked, result.scores)):
            top = int(row[0])
            if top < 0:  # no result for this query
                w.writerow([i, dataset.queries[i].name, "", "", "", "", 0, rank_name, ""])
                continue
            local = ""
            if reranked is not None and reranked.local_scores.size and np.isfinite(reranked.local_scores[i, 0]):
                local = f"{reranked.local_scores[i, 0]:g}"
            w.writerow([i, dataset.queries[i].name, top, dataset.database[top].name, f"{sc[0]:.6f}", local,
                        int(top in dataset.positives[i]), rank_name, " ".join(str(int(r)) for r in row[:5] if r >= 0)])
    with replaced_atomically(out / "pr_curve.csv", VprError) as tmp, tmp.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["curve", "threshold", "precision", "recall"])
        curves = [("global", result.pr if reranked is None else reranked.pr_global)]
        if reranked is not None:
            curves.append((f"reranked_{reranked.features}", reranked.pr_local))
        for name, pr in curves:
            if pr is not None:
                w.writerows((name, *r) for r in zip(pr.thresholds, pr.precision, pr.recall))
    return [out / "results.json", out / "predictions.csv", out / "pr_curve.csv",
            plot(result, dataset, out / "eval.png", title, reranked=reranked,
                 warning=RANDOM_WEIGHTS_NOTE if (settings or {}).get("random_weights") else "")]


def plot(result: EvalResult, dataset: EvalDataset, path: Path, title: str, examples: int = 4,
         reranked: RerankSummary | None = None, warning: str = "") -> Path:
    """PR curves (global, and re-ranked local scores when re-ranked), Recall@N (before and after
    re-ranking, values on the bars), and example query / top-1 pairs framed green (a correct
    match) or red (a wrong one), with a legend; ``warning`` in red under the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    fig = plt.figure(figsize=(15, 6))
    grid = fig.add_gridspec(2, 2 + examples, width_ratios=[1.25, 1.25] + [1] * examples)
    ax = fig.add_subplot(grid[:, 0])
    global_pr = result.pr if reranked is None else reranked.pr_global
    if global_pr is not None:
        ax.plot(global_pr.recall, global_pr.precision, lw=1.5, label=f"global cosine (AUC {global_pr.auc:.3f})")
    if reranked is not None and reranked.pr_local is not None:
        ax.plot(reranked.pr_local.recall, reranked.pr_local.precision, lw=1.5,
                label=f"re-ranked, {reranked.score_unit} (AUC {reranked.pr_local.auc:.3f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02), title="PR of the top-1 match")
    ax.legend(loc="lower left", fontsize=8)
    ax2 = fig.add_subplot(grid[:, 1])
    ns = list(result.recalls)
    x = np.arange(len(ns))
    if reranked is None:
        groups = [("global", result.recalls, "tab:blue")]
    else:
        groups = [("global", reranked.recalls_before, "tab:gray"),
                  (f"re-ranked ({reranked.features})", reranked.recalls_after, "tab:blue")]
    width = 0.8 / len(groups)
    for g, (name, rec, colour) in enumerate(groups):
        bars = ax2.bar(x + (g - (len(groups) - 1) / 2) * width, [rec[n] for n in ns], width, color=colour, label=name)
        # upright values over side-by-side bars would run into each other (0.95 next to 0.95)
        ax2.bar_label(bars, fmt="%.2f", fontsize=7, padding=2, rotation=90 if len(groups) > 1 else 0)
    ax2.set_xticks(x, [f"R@{n}" for n in ns])
    ax2.set(ylim=(0, 1.2), yticks=np.linspace(0, 1, 6), ylabel="fraction of queries", title="Recall@N")
    ax2.legend(loc="upper left", fontsize=8)
    picks = np.linspace(0, len(dataset.queries) - 1, examples).astype(int)
    for j, qi in enumerate(picks):
        top = int(result.ranked[qi, 0])
        ok = top in dataset.positives[qi]
        for r, (img_path, label) in enumerate(((dataset.queries[qi], f"query {qi}"),
                                               (dataset.database[top], f"top-1: db {top}"))):
            a = fig.add_subplot(grid[r, 2 + j])
            a.imshow(read_rgb(img_path))
            a.set_title(label, fontsize=8)
            a.set_xticks([])
            a.set_yticks([])
            if r == 1:
                for s in a.spines.values():
                    s.set_edgecolor("tab:green" if ok else "tab:red")
                    s.set_linewidth(4)
    fig.legend(handles=[Patch(edgecolor="tab:green", facecolor="none", lw=3, label="top-1 correct"),
                        Patch(edgecolor="tab:red", facecolor="none", lw=3, label="top-1 wrong")],
               loc="lower right", ncol=2, fontsize=8, frameon=False)
    ranking = "global ranking" if reranked is None else f"re-ranked top-{reranked.top_k} by {reranked.features}"
    fig.suptitle(f"{dataset.name} ({len(dataset.database)} database, {len(dataset.queries)} queries): {title}; "
                 f"{ranking}" + (f"\n{warning}" if warning else ""), fontsize=10,
                 color="tab:red" if warning else "black")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    with replaced_atomically(path, VprError) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path
