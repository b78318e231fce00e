"""Place-recognition metrics: Recall@N and precision-recall of top-1 matches (ROS-free).

Conventions (as in VPR-Bench and the VPR literature):
* Recall@N: fraction of queries with a correct database image among their first N results.
* Precision-recall: each query's top-1 match is *accepted* when its score >= threshold.
  precision = correct accepted / accepted; recall = correct accepted / queries that have at
  least one correct database image. AUC is the area under precision(recall) (trapezoids),
  and "recall at 100% precision" the largest recall reached with no wrong accepted match.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


def recall_at_n(ranked_ids: np.ndarray, positives: Sequence[set[int]],
                ns: Sequence[int] = (1, 5, 10, 20)) -> dict[int, float]:
    """Fraction of queries with a true positive among their first N predictions.

    ranked_ids: int [Q, K] database ids, best first (-1 = no prediction).
    positives: per query, the set of correct database ids (queries with none count as misses).
    N larger than K is clipped to K.
    """
    ranked = np.asarray(ranked_ids)
    if ranked.ndim != 2 or ranked.shape[0] != len(positives):
        raise ValueError(f"ranked_ids {list(ranked.shape)} does not match {len(positives)} queries")
    out: dict[int, float] = {}
    if len(positives) == 0:
        return {n: 0.0 for n in ns}
    for n in ns:
        hits = [bool(pos.intersection(row[:n].tolist())) for row, pos in zip(ranked, positives)]
        out[n] = float(np.mean(hits))
    return out


@dataclass(frozen=True)
class PrCurve:
    """Precision and recall at every distinct top-1 score threshold (descending)."""

    thresholds: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    auc: float
    recall_at_100_precision: float


def precision_recall(top1_scores: np.ndarray, top1_correct: np.ndarray, has_positive: np.ndarray) -> PrCurve:
    """PR curve of accepting top-1 matches by score (see module docstring).

    top1_scores: float [Q]; top1_correct: bool [Q]; has_positive: bool [Q] (the query has at
    least one correct database image).
    """
    s = np.asarray(top1_scores, np.float64)
    c = np.asarray(top1_correct, bool)
    if not (s.shape == c.shape == np.asarray(has_positive).shape) or s.ndim != 1:
        raise ValueError("top1_scores, top1_correct and has_positive must be 1-D of equal length")
    n_pos = int(np.sum(has_positive))
    if len(s) == 0 or n_pos == 0:
        z = np.zeros(0)
        return PrCurve(z, z, z, 0.0, 0.0)
    order = np.argsort(-s, kind="stable")
    s, c = s[order], c[order]
    tp = np.cumsum(c)
    accepted = np.arange(1, len(s) + 1)
    last = np.r_[s[1:] != s[:-1], True]  # one point per distinct threshold (ties accepted together)
    precision, recall, thresholds = (tp / accepted)[last], (tp / n_pos)[last], s[last]
    r = np.r_[0.0, recall]
    p = np.r_[precision[0], precision]
    auc = float(np.sum((r[1:] - r[:-1]) * (p[1:] + p[:-1]) / 2))
    perfect = recall[precision >= 1.0]
    return PrCurve(thresholds, precision, recall, auc, float(perfect.max()) if len(perfect) else 0.0)


def positives_within(query_pos: np.ndarray, db_pos: np.ndarray, radius: float) -> list[set[int]]:
    """Per query, database ids whose position (any dims) lies within ``radius``."""
    q = np.asarray(query_pos, np.float64).reshape(len(query_pos), -1)
    d = np.asarray(db_pos, np.float64).reshape(len(db_pos), -1)
    out = []
    for i in range(0, len(q), 1024):  # blocks: a 100k x 100k distance matrix does not fit
        dist = np.linalg.norm(q[i:i + 1024, None, :] - d[None, :, :], axis=2)
        out += [set(np.flatnonzero(row <= radius).tolist()) for row in dist]
    return out


def positives_by_index(n_queries: int, n_db: int, tolerance: int) -> list[set[int]]:
    """Sequences: query i matches database frames i - tolerance .. i + tolerance."""
    return [set(range(max(0, i - tolerance), min(n_db, i + tolerance + 1))) for i in range(n_queries)]
