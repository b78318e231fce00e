"""Loop-closure detection scored the standard way on one sequence (ROS-free).

A sequence of images is driven *in order* through the map builder's live loop-closure code
(:class:`~vpr_ros.mapping.live_loops.LiveLoopCloser`: every frame is matched against the frames
at least ``exclude_recent`` s older, then added), and each frame's decision is scored against a
ground-truth loop matrix ``gt[i, j]`` (frame i revisits frame j). As FAB-MAP, DBoW2, iBoW-LCD and
RTAB-Map report it: the precision-recall curve over the score threshold, its area, and the
**maximum recall at 100 % precision**, for four detectors built from the same run:

* ``retrieval``: the top-1 (after re-ranking) accepted when its cosine reaches the threshold;
* ``verification``: ... and its geometry verifies (the verifier the node runs);
* ``temporal``: the node's temporal rules (:class:`~vpr_ros.loop_closure.LoopClosureDetector`:
  consistency, rate) over the retrieval decisions, re-run for every threshold;
* ``verification+temporal``: both, as the map builder publishes closures by default;
* ``sequence`` / ``verification+sequence`` (with the frames' descriptors): the temporal filter of
  sequence matching (SeqSLAM): a match j of frame i is scored by the mean cosine of the last
  ``sequence_length`` frames with the frames before j along the same diagonal,
  ``mean_k d[i-k] . d[j-k]``, in place of the consistency rule;
* ``inliers``: the top-1 accepted by its re-ranking score (inliers of the local matching) instead of
  its cosine; with the whole map re-ranked (``vpr_ros_eval_loops --rerank-all``) this is the
  re-ranker alone, the global descriptor deciding nothing.

A frame is a positive when the ground truth gives it at least one loop among the frames it may
match (older by ``exclude_recent``); a decision is correct when its matched frame is one of them.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from vpr_ros.errors import DatasetError

if TYPE_CHECKING:
    from vpr_ros.config import LiveLoopConfig, VerificationConfig
    from vpr_ros.runtime.base import DescriptorBackend
    from vpr_ros.verification.features import CameraIntrinsics

VARIANTS = ("retrieval", "verification", "temporal", "verification+temporal", "sequence", "verification+sequence",
            "inliers")
SEQUENCE_LENGTH = 5
IMAGE_SUFFIXES = (".png", ".bmp", ".pgm", ".tif", ".tiff")


@dataclass(frozen=True)
class FrameDecision:
    """One frame of the run: its top-1 older frame (-1: none yet), cosine, verification outcome
    and time (ms: encoding, search, re-ranking and verification)."""

    index: int
    stamp: float
    top1: int
    score: float
    verified: bool
    method: str
    inliers: int
    ms: float
    local_score: int = -1   # the top-1's re-ranking score (local inliers; -1: not re-ranked)


@dataclass(frozen=True)
class PrResult:
    """A detector's curve: thresholds [T] (descending), precision [T], recall [T], area, and the
    maximum recall at 100 % precision with its threshold (nan when no threshold reaches it)."""

    thresholds: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    auc: float
    max_recall_at_full_precision: float
    threshold_at_full_precision: float
    positives: int
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------- ground truth
#: names a .mat loop matrix goes by when a file holds several [n, n] variables
MAT_NAMES = ("truth", "gt", "GT", "groundtruth", "GroundTruth", "ground_truth", "loops")
MAX_MAT_BYTES = 1 << 30


def _read_mat(p: Path, n: int) -> np.ndarray:
    """The loop matrix of a MATLAB v5 file (scipy.io; no pickle, no code): the one [n, n] numeric or
    logical variable, else the one named as in MAT_NAMES. v7.3 files (HDF5) are refused by name."""
    import io

    from vpr_ros.files import read_regular_bytes

    try:
        from scipy.io import loadmat
    except ImportError:
        raise DatasetError(f"{p}: reading .mat needs scipy (pip install scipy), or save the matrix as .npy / .csv") from None
    raw = read_regular_bytes(p, "ground-truth loop matrix", MAX_MAT_BYTES, DatasetError)
    if raw[:128].find(b"MATLAB 7.3") >= 0 or raw[:8] == b"\x89HDF\r\n\x1a\n":
        raise DatasetError(f"{p}: a MATLAB v7.3 (HDF5) file; save it as v5 (save -v7) or export the matrix to .npy / .csv")
    try:
        variables = loadmat(io.BytesIO(raw))
    except NotImplementedError as exc:  # scipy's answer to v7.3
        raise DatasetError(f"{p}: {exc}; save it as v5 (save -v7) or as .npy / .csv") from None
    except Exception as exc:  # noqa: BLE001 - scipy.io raises many types on a damaged file
        raise DatasetError(f"{p}: not a readable MATLAB file ({type(exc).__name__}: {exc})") from None
    square = {k: v for k, v in variables.items() if not k.startswith("__") and isinstance(v, np.ndarray)
              and v.ndim == 2 and v.shape == (n, n) and v.dtype.kind in "biuf"}
    if len(square) != 1:
        named = {k: v for k, v in square.items() if k in MAT_NAMES}
        if len(named) != 1:
            shapes = ", ".join(f"{k} {list(np.shape(v))}" for k, v in variables.items() if not k.startswith("__"))
            raise DatasetError(f"{p}: needs exactly one [{n}, {n}] numeric variable (or one named "
                               f"{' / '.join(MAT_NAMES[:3])}); it holds {shapes or 'none'}")
        square = named
    return next(iter(square.values()))


def read_loop_matrix(path: str | Path, n: int) -> np.ndarray:
    """A ground-truth loop matrix bool [n, n] from ``.npy`` (0/1 or bool), ``.mat`` (MATLAB v5, as the
    FAB-MAP-era evaluation codes ship them: the one [n, n] variable, or the one named truth / gt), ``.csv`` / ``.txt``
    (a square 0/1 matrix, comma or whitespace separated) or an image (``*_GT.bmp`` as RTAB-Map
    ships, ``.png``, ...: a non-zero pixel (i, j) is a loop). Made symmetric; DatasetError naming
    the file otherwise."""
    import cv2

    from vpr_ros.files import check_readable_file

    p = check_readable_file(Path(path), "ground-truth loop matrix", DatasetError)
    suffix = p.suffix.lower()
    try:
        if suffix == ".npy":
            m = np.load(p, allow_pickle=False)
        elif suffix in IMAGE_SUFFIXES:
            m = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
            if m is None:
                raise DatasetError(f"{p}: not an image OpenCV can read")
        elif suffix == ".mat":
            m = _read_mat(p, n)
        elif suffix in (".csv", ".txt"):
            from vpr_ros.files import read_text

            text = read_text(p, "ground-truth loop matrix", DatasetError).replace(",", " ")
            rows = [line.split() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
            m = np.array([[float(v) for v in row] for row in rows]) if rows else np.zeros((0, 0))
        else:
            raise DatasetError(f"{p}: a loop matrix is .npy, .mat, .csv / .txt or an image ({', '.join(IMAGE_SUFFIXES)})")
    except (ValueError, OSError) as exc:
        raise DatasetError(f"{p}: cannot read the loop matrix ({exc})") from None
    m = np.asarray(m)
    if m.ndim != 2 or m.shape != (n, n):
        raise DatasetError(f"{p}: the loop matrix is {list(m.shape)}, the sequence has {n} frames (needs [{n}, {n}])")
    if not np.isfinite(m.astype(np.float64)).all():
        raise DatasetError(f"{p}: the loop matrix holds values that are not finite")
    gt = m.astype(np.float64) != 0
    return gt | gt.T


def loops_from_poses(positions: np.ndarray, stamps: np.ndarray, radius: float, min_gap_s: float) -> np.ndarray:
    """gt[i, j]: frames within ``radius`` m of each other and at least ``min_gap_s`` s apart."""
    pos = np.asarray(positions, np.float64)
    t = np.asarray(stamps, np.float64)
    gt = np.zeros((len(pos), len(pos)), bool)
    for i in range(0, len(pos), 512):
        d = np.linalg.norm(pos[i:i + 512, None, :] - pos[None, :, :], axis=2)
        gt[i:i + 512] = (d <= radius) & (np.abs(t[i:i + 512, None] - t[None, :]) >= min_gap_s)
    return gt


# ---------------------------------------------------------------------------- the run
def run_sequence(backend: "DescriptorBackend", images: "Sequence[Path | Callable[[], np.ndarray]]",
                 stamps: "Sequence[float] | np.ndarray",
                 live: "LiveLoopConfig", verification: "VerificationConfig",
                 intrinsics: "CameraIntrinsics | None" = None,
                 progress: Callable[[int], None] | None = None) -> tuple[list[FrameDecision], np.ndarray]:
    """Drive ``images`` (files, or decoders returning RGB: a bag's frames) in order through the
    live loop closer (every frame a keyframe); returns the decisions and the frames' descriptors [N, D]."""
    from vpr_ros.config import KeyframeConfig
    from vpr_ros.datasets import read_rgb
    from vpr_ros.mapping.builder import MapBuilder
    from vpr_ros.mapping.live_loops import LiveLoopCloser, live_index_type
    from vpr_ros.mapping.map_store import Keyframe

    builder = MapBuilder(backend, KeyframeConfig(), verification=verification, intrinsics=intrinsics)
    builder.map.reindex(live_index_type(builder.index_cfg, 0, builder.map.model.descriptor_dim))
    builder.live = True
    closer = LiveLoopCloser(backend, builder.map, live, verification, builder.session)
    verifier = closer.localizer.verifier
    out = []
    for i, (path, stamp) in enumerate(zip(images, stamps)):
        t0 = time.perf_counter()
        rgb = read_rgb(path) if isinstance(path, Path) else path()
        desc, feats = builder.encode([rgb], None, intrinsics)
        kf = Keyframe(float(stamp), (float(i), 0.0, 0.0, 0.0, 0.0, 0.0, 1.0),
                      image_ref=str(path) if isinstance(path, Path) else "", session=builder.session)
        c = closer.check(desc, feats[0] if feats else None, kf, intrinsics)
        top1, score, verified, method, inliers, local = -1, -math.inf, False, "", 0, -1
        if c is not None:
            top = c.result.matches[0]
            top1, score, local = top.db_id, top.score, top.local_score
            stored, query = builder.map.local_features(top.db_id), feats[0] if feats else None
            if verifier.enabled and stored is not None and query is not None:
                v = verifier.verify(query, stored)
                verified, method, inliers = v.verified, v.method, v.inliers
        builder.add_encoded(desc, [kf], feats)
        closer.added(kf)
        out.append(FrameDecision(i, float(stamp), top1, score, verified, method, inliers,
                                 (time.perf_counter() - t0) * 1e3, local))
        if progress is not None:
            progress(i)
    return out, builder.map.descriptors()


def sequence_scores(run: Sequence[FrameDecision], descriptors: np.ndarray, length: int = SEQUENCE_LENGTH) -> np.ndarray:
    """[N]: for frame i with top-1 j, ``sum_k d[i-k] . d[j-k] / length`` over k < ``length`` where
    both exist (as the nodes' temporal_filter 'sequence' scores it; -inf without a top-1)."""
    d = np.asarray(descriptors, np.float32)
    out = np.full(len(run), -np.inf)
    for r in run:
        if r.top1 < 0:
            continue
        ks = [k for k in range(length) if r.index - k >= 0 and r.top1 - k >= 0]
        out[r.index] = float(sum(d[r.index - k] @ d[r.top1 - k] for k in ks) / length)
    return out


# ---------------------------------------------------------------------------- scoring
def searchable_positives(gt: np.ndarray, stamps: np.ndarray, exclude_recent: float) -> np.ndarray:
    """bool [N]: frame i has a ground-truth loop among the frames it may match."""
    t = np.asarray(stamps, np.float64)
    older = t[None, :] <= t[:, None] - exclude_recent
    return np.any(gt & older, axis=1)


def score_variants(run: Sequence[FrameDecision], gt: np.ndarray, exclude_recent: float, consistency: int,
                   window: int, max_rate: float, descriptors: np.ndarray | None = None) -> dict[str, PrResult]:
    """The detectors' PR curves (see the module docstring; the sequence ones need ``descriptors``)."""
    from vpr_ros.loop_closure import LoopClosureDetector

    stamps = np.array([d.stamp for d in run])
    positive = searchable_positives(gt, stamps, exclude_recent)
    has = np.array([d.top1 >= 0 for d in run])
    scores = np.array([d.score if d.top1 >= 0 else -np.inf for d in run])
    correct = np.array([d.top1 >= 0 and bool(gt[d.index, d.top1]) for d in run])
    verified = np.array([d.verified for d in run])
    thresholds = np.unique(scores[has])[::-1] if has.any() else np.zeros(0)

    def curve(accept_at: Callable[[float], np.ndarray], over: np.ndarray | None = None) -> PrResult:
        precision, recall = [], []
        ts = thresholds if over is None else np.unique(over[np.isfinite(over)])[::-1]
        for t in ts:
            acc = accept_at(float(t))
            tp, fp = int(np.sum(acc & correct)), int(np.sum(acc & ~correct))
            precision.append(tp / (tp + fp) if tp + fp else 1.0)
            recall.append(tp / max(1, int(positive.sum())))
        p, r = np.array(precision), np.array(recall)
        rr, pp = np.r_[0.0, r], np.r_[p[0] if len(p) else 1.0, p]
        auc = float(np.sum((rr[1:] - rr[:-1]) * (pp[1:] + pp[:-1]) / 2)) if len(p) else 0.0
        full = [(r[k], ts[k]) for k in range(len(p)) if p[k] >= 1.0 and r[k] > 0]
        best = max(full) if full else (0.0, math.nan)
        return PrResult(ts, p, r, auc, float(best[0]), float(best[1]), int(positive.sum()))

    def temporal(t: float, gate: bool) -> np.ndarray:
        det = LoopClosureDetector(t, exclude_recent, consistency, window, max_rate)
        out = np.zeros(len(run), bool)
        for k, d in enumerate(run):
            if d.top1 < 0:
                continue
            replay = _Recorded(bool(verified[k])).replay if gate else None
            out[k] = det.update(d.stamp, run[d.top1].stamp, d.top1, d.score, replay).publish
        return out

    out = {"retrieval": curve(lambda t: has & (scores >= t)),
           "verification": curve(lambda t: has & (scores >= t) & verified),
           "temporal": curve(lambda t: temporal(t, False)),
           "verification+temporal": curve(lambda t: temporal(t, True))}
    if descriptors is not None:
        seq = sequence_scores(run, descriptors)
        out["sequence"] = curve(lambda t: has & (seq >= t), seq)
        out["verification+sequence"] = curve(lambda t: has & (seq >= t) & verified, seq)
    local = np.array([float(d.local_score) if d.top1 >= 0 and d.local_score >= 0 else -np.inf for d in run])
    out["inliers"] = curve(lambda t: has & (local >= t), local)
    return out


@dataclass(frozen=True)
class _Recorded:
    """A verification outcome recorded in the run, replayed to the temporal rules."""

    verified: bool
    reason: str = "recorded"

    def replay(self) -> "_Recorded":
        return self
