"""Recall@N and related metrics (the evaluation issue extends this module)."""
from __future__ import annotations

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


def positives_within(query_pos: np.ndarray, db_pos: np.ndarray, radius: float) -> list[set[int]]:
    """Per query, database ids whose position (any dims) lies within ``radius``."""
    q = np.asarray(query_pos, np.float64).reshape(len(query_pos), -1)
    d = np.asarray(db_pos, np.float64).reshape(len(db_pos), -1)
    dist = np.linalg.norm(q[:, None, :] - d[None, :, :], axis=2)
    return [set(np.flatnonzero(row <= radius).tolist()) for row in dist]
