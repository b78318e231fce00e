"""Evaluate a model on a dataset: descriptors (cached), exact search, Recall@N, PR, outputs.

Used by the ``vpr_ros_eval`` command and by training validation. The same preprocessing and
backends as the nodes.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from vpr_ros.datasets import EvalDataset, fingerprint_files, read_rgb
from vpr_ros.evaluation import PrCurve, precision_recall, recall_at_n
from vpr_ros.pca import Pca
from vpr_ros.runtime.base import DescriptorBackend
from vpr_ros.runtime.preprocess import preprocess_batch

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


def describe_images(backend: DescriptorBackend, paths: Sequence[Path], batch_size: int = 16,
                    progress: bool = False, desc: str = "images") -> np.ndarray:
    """Descriptors [N, D] of image files, in order."""
    it = range(0, len(paths), batch_size)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=desc, unit="batch")
    out = [backend.infer(preprocess_batch([read_rgb(p) for p in paths[i:i + batch_size]], backend.input_size))
           for i in it]
    return np.concatenate(out) if out else np.zeros((0, backend.descriptor_dim), np.float32)


def cache_key(backend: DescriptorBackend, dataset: EvalDataset, batch_size: int = 0) -> str:
    """Depends on the model (id, weights, input size), on every image file (name, size, mtime)
    and, for batch-dependent models, on the batch size."""
    batch = "" if backend.batch_independent else f"|batch={batch_size}"
    h = hashlib.sha256(f"{backend.model_id}|{backend.weights_sha256}|{backend.input_size}{batch}".encode())
    fingerprint_files(dataset.database, h)
    h.update(b"|queries|")
    return fingerprint_files(dataset.queries, h).hexdigest()[:20]


def load_or_describe(backend: DescriptorBackend, dataset: EvalDataset, batch_size: int,
                     cache_dir: Path | None, progress: bool) -> tuple[np.ndarray, np.ndarray, bool, float]:
    """(database [N, D], queries [M, D], from cache?, seconds spent describing)."""
    path = cache_dir / f"{dataset.name}-{cache_key(backend, dataset, batch_size)}.npz" if cache_dir else None
    if path is not None and path.is_file():
        with np.load(path, allow_pickle=False) as f:
            return f["database"], f["queries"], True, 0.0
    t0 = time.perf_counter()
    db = describe_images(backend, dataset.database, batch_size, progress, "database")
    q = describe_images(backend, dataset.queries, batch_size, progress, "queries")
    seconds = time.perf_counter() - t0
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.npz")
        np.savez(tmp, database=db, queries=q)
        os.replace(tmp, path)
    return db, q, False, seconds


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
             cache_dir: Path | None = None, pca: Pca | None = None, progress: bool = False) -> EvalResult:
    """Describe (or load cached descriptors), optionally apply PCA, search, score."""
    db, q, cached, seconds = load_or_describe(backend, dataset, batch_size, cache_dir, progress)
    if pca is not None:
        db, q = pca.apply(db), pca.apply(q)
    result = evaluate_descriptors(db, q, dataset.positives)
    result.cached = cached
    n = len(dataset.database) + len(dataset.queries)
    result.timings["describe_ms_per_image"] = seconds * 1e3 / n if not cached else float("nan")
    return result


def write_outputs(result: EvalResult, dataset: EvalDataset, out: Path, title: str) -> list[Path]:
    """results.json, predictions.csv, pr_curve.csv and eval.png in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "dataset": dataset.name, "layout": dataset.layout, "database": len(dataset.database),
        "queries": len(dataset.queries), "model": title,
        "recall": {f"R@{n}": v for n, v in result.recalls.items()},
        "pr_auc": result.pr.auc, "recall_at_100_precision": result.pr.recall_at_100_precision,
        "timings": result.timings, "descriptors_from_cache": result.cached,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    with (out / "predictions.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["query", "query_image", "top1_db_id", "top1_image", "top1_score", "correct", "top5_db_ids"])
        for i, (row, sc) in enumerate(zip(result.ranked, result.scores)):
            w.writerow([i, dataset.queries[i].name, int(row[0]), dataset.database[int(row[0])].name,
                        f"{sc[0]:.6f}", int(int(row[0]) in dataset.positives[i]), " ".join(map(str, row[:5]))])
    with (out / "pr_curve.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["threshold", "precision", "recall"])
        w.writerows(zip(result.pr.thresholds, result.pr.precision, result.pr.recall))
    return [out / "results.json", out / "predictions.csv", out / "pr_curve.csv", plot(result, dataset, out / "eval.png", title)]


def plot(result: EvalResult, dataset: EvalDataset, path: Path, title: str, examples: int = 4) -> Path:
    """PR curve, Recall@N, and example query / top-1 pairs (green = correct, red = wrong)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(14, 6.5))
    grid = fig.add_gridspec(2, 2 + examples)
    ax = fig.add_subplot(grid[:, 0])
    ax.plot(result.pr.recall, result.pr.precision, lw=1.5)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02),
           title=f"PR of top-1 (AUC {result.pr.auc:.3f})")
    ax2 = fig.add_subplot(grid[:, 1])
    ns = list(result.recalls)
    ax2.bar([f"R@{n}" for n in ns], [result.recalls[n] for n in ns], color="tab:blue")
    ax2.set(ylim=(0, 1), title="Recall@N")
    picks = np.linspace(0, len(dataset.queries) - 1, examples).astype(int)
    for j, qi in enumerate(picks):
        top = int(result.ranked[qi, 0])
        ok = top in dataset.positives[qi]
        for r, (img_path, label) in enumerate(((dataset.queries[qi], f"query {qi}"),
                                               (dataset.database[top], f"top-1 db {top}"))):
            a = fig.add_subplot(grid[r, 2 + j])
            a.imshow(read_rgb(img_path))
            a.set_title(label, fontsize=8)
            a.set_xticks([])
            a.set_yticks([])
            if r == 1:
                for s in a.spines.values():
                    s.set_edgecolor("tab:green" if ok else "tab:red")
                    s.set_linewidth(4)
    fig.suptitle(f"{dataset.name}: {title}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
