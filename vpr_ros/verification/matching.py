"""Matching local features between two images.

* :func:`ratio_matches`: nearest neighbour with Lowe's ratio test (Hamming for binary ORB
  descriptors, L2 for SIFT), optionally also mutual.
* :func:`mutual_matches`: mutual nearest neighbours by cosine similarity (dense tokens; one
  matrix product and two argmaxes, as SelaVPR re-ranks, no RANSAC), optionally above a threshold.

Both return index pairs [M, 2] (into a, into b).
"""
from __future__ import annotations

import cv2
import numpy as np

from vpr_ros.verification.features import LocalFeatures


def ratio_matches(a: LocalFeatures, b: LocalFeatures, ratio: float = 0.8, mutual: bool = True) -> np.ndarray:
    """Ratio-test matches of two classical feature sets (Hamming for ORB, L2 for SIFT): int [M, 2]."""
    if len(a) < 2 or len(b) < 2:
        return np.zeros((0, 2), np.int64)
    binary = a.kind == "orb"
    norm = cv2.NORM_HAMMING if binary else cv2.NORM_L2
    da = a.descriptors if binary else a.descriptors.astype(np.float32)
    db = b.descriptors if binary else b.descriptors.astype(np.float32)
    matcher = cv2.BFMatcher(norm)
    knn = matcher.knnMatch(da, db, k=2)
    pairs = [(m[0].queryIdx, m[0].trainIdx) for m in knn if len(m) == 2 and m[0].distance < ratio * m[1].distance]
    if not pairs:
        return np.zeros((0, 2), np.int64)
    out = np.array(pairs, np.int64)
    if mutual:
        back = matcher.match(db, da)
        best_in_a = {m.queryIdx: m.trainIdx for m in back}
        out = out[[best_in_a.get(int(j)) == int(i) for i, j in out]]
    return out.reshape(-1, 2)


def mutual_matches(a: LocalFeatures, b: LocalFeatures, min_similarity: float = 0.0) -> np.ndarray:
    """Mutual nearest neighbours of two dense (L2-normalised) feature sets: int [M, 2]."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((0, 2), np.int64)
    # OpenCV's gemm, not numpy's: OpenBLAS threads keep spinning after a product and, on a few
    # cores, slow the next inference down (measured in benchmarks/verification.py)
    sim = cv2.gemm(a.descriptors.astype(np.float32), b.descriptors.astype(np.float32), 1.0, None, 0.0,
                   flags=cv2.GEMM_2_T)
    ab = sim.argmax(axis=1)
    ba = sim.argmax(axis=0)
    i = np.arange(len(a))
    keep = (ba[ab] == i) & (sim[i, ab] > min_similarity)
    return np.stack([i[keep], ab[keep]], axis=1).astype(np.int64)


def match(a: LocalFeatures, b: LocalFeatures, ratio: float = 0.8, min_similarity: float = 0.0,
          mutual: bool = True) -> np.ndarray:
    """The matcher for the features' kind (``mutual``: classical matches must also be each other's best)."""
    if a.kind != b.kind:
        raise ValueError(f"cannot match '{a.kind}' features with '{b.kind}' features")
    return mutual_matches(a, b, min_similarity) if a.kind == "dense" else ratio_matches(a, b, ratio, mutual)
