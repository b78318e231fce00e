"""Offline localisation (ROS-free): replay a bag or an image folder against a map through the
node's own :class:`~vpr_ros.localization.Localizer` and record, for every frame, the matches, the
pose, the geometric verification and the loop-closure decision: the way to tune thresholds
(``score_threshold``, ``verification.min_inliers``, temporal consistency...) before a robot.

With ground-truth poses (a pose topic, a trajectory, a poses CSV or gmberton names) each frame's
position error is recorded too; a match counts as correct within ``correct_within`` metres.
"""
from __future__ import annotations

import collections
import csv
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from vpr_ros.errors import VprError
from vpr_ros.files import replaced_atomically

COLUMNS = ["frame", "stamp", "image", "accepted", "top1_db_id", "top1_score", "top1_local_score",
           "verification", "metric", "x", "y", "z", "qx", "qy", "qz", "qw", "loop_status", "loop_reason",
           "loop_t_match", "truth_x", "truth_y", "position_error_m", "top1_distance_m", "correct", "ms"]


@dataclass
class OfflineFrame:
    """One query: its decoder, stamp (s), a reference for the CSV and, if known, its true position."""

    decode: Callable[[], np.ndarray]
    stamp: float
    ref: str
    truth: tuple[float, float, float] | None = None


def localize_frames(localizer: Any, frames: Iterable[OfflineFrame], intrinsics: Any = None,
                    correct_within: float = 25.0, total: int | None = None,
                    progress: bool = True) -> list[dict[str, Any]]:
    """Run every frame through ``localizer.localize``; one row (COLUMNS) per frame. A frame that
    cannot be used (undecodable, no keyframe old enough) is a row with its reason, not an abort."""
    rows: list[dict[str, Any]] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="localizing", unit="frame")
    try:
        for i, f in enumerate(frames):
            row: dict[str, Any] = {c: "" for c in COLUMNS}
            row.update(frame=i, stamp=f"{f.stamp:.6f}", image=f.ref)
            t0 = time.perf_counter()
            try:
                r = localizer.localize(f.decode(), f.stamp, intrinsics=intrinsics)
            except VprError as exc:
                row.update(accepted=0, loop_status="error", loop_reason=str(exc))
                rows.append(row)
                if bar is not None:
                    bar.update(1)
                continue
            row["ms"] = f"{(time.perf_counter() - t0) * 1e3:.1f}"
            row["accepted"] = int(r.accepted)
            if r.matches:
                m = r.matches[0]
                row.update(top1_db_id=m.db_id, top1_score=f"{m.score:.6f}",
                           top1_local_score=m.local_score if m.local_score >= 0 else "")
                if f.truth is not None:
                    d = math.dist(m.keyframe.pose[:2], f.truth[:2])
                    row.update(top1_distance_m=f"{d:.3f}", correct=int(d <= correct_within))
            if r.pose is not None:
                row.update(zip(("x", "y", "z", "qx", "qy", "qz", "qw"), (f"{v:.6f}" for v in r.pose)))
                if f.truth is not None:
                    row["position_error_m"] = f"{math.dist(r.pose[:2], f.truth[:2]):.3f}"
            if f.truth is not None:
                row.update(truth_x=f"{f.truth[0]:.6f}", truth_y=f"{f.truth[1]:.6f}")
            if r.loop is not None:
                v = r.loop.verification
                row.update(loop_status=r.loop.status, loop_reason=r.loop.reason, loop_t_match=f"{r.loop.t_match:.6f}")
                if v is not None:
                    row.update(verification=f"{'verified' if v.verified else 'refused'}: {v.method}, {v.inliers} of "
                                            f"{v.matches} inliers" + (f" ({v.reason})" if v.reason else ""),
                               metric=int(bool(v.metric)))
            rows.append(row)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return rows


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Counts and rates of a run (what the summary line and results.json report)."""
    n = len(rows)
    ok = [r for r in rows if r["loop_status"] != "error"]
    with_truth = [r for r in ok if r["correct"] != ""]
    accepted = [r for r in ok if r["accepted"] == 1]
    verified = [r for r in ok if r["loop_status"] in ("verified", "accepted")]  # published closures
    out: dict[str, Any] = {
        "frames": n, "answered": len(ok), "failed": n - len(ok), "accepted": len(accepted),
        "loop_closures": len(verified),
        "loop_decisions": {s: sum(1 for r in ok if r["loop_status"] == s)
                           for s in ("verified", "accepted", "candidate", "rejected")},
    }
    if with_truth:
        out["top1_correct"] = sum(int(r["correct"]) for r in with_truth) / len(with_truth)
        acc_truth = [r for r in accepted if r["correct"] != ""]
        out["accepted_precision"] = (sum(int(r["correct"]) for r in acc_truth) / len(acc_truth)) if acc_truth else None
        lc = [r for r in verified if r["correct"] != ""]
        out["loop_closure_precision"] = (sum(int(r["correct"]) for r in lc) / len(lc)) if lc else None
        errs = [float(r["position_error_m"]) for r in ok if r["position_error_m"] != ""]
        if errs:
            out["position_error_m"] = {"median": float(np.median(errs)), "p95": float(np.percentile(errs, 95))}
    ms = [float(r["ms"]) for r in ok if r["ms"] != ""]
    if ms:
        out["ms_per_frame"] = {"median": float(np.median(ms)), "p95": float(np.percentile(ms, 95))}
    return out


def write_outputs(rows: Sequence[dict[str, Any]], map_poses: np.ndarray, out: Path, settings: dict[str, Any],
                  title: str) -> list[Path]:
    """localization.csv (one row per frame), results.json (summary + settings) and localize.png."""
    out.mkdir(parents=True, exist_ok=True)
    with replaced_atomically(out / "localization.csv", VprError) as tmp, tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    summary = summarize(rows)
    with replaced_atomically(out / "results.json", VprError) as tmp:
        tmp.write_text(json.dumps({"summary": summary, "settings": settings}, indent=1))
    threshold = (settings.get("localizer") or {}).get("score_threshold")
    return [out / "localization.csv", out / "results.json",
            plot(rows, map_poses, out / "localize.png", title, threshold, settings.get("correct_within_m"))]


def _decision_label(rows: Sequence[dict[str, Any]], status: str, count: int) -> str:
    """'rejected (24, mostly: score below threshold)': a decision with its most frequent reason."""
    reasons = collections.Counter(str(r["loop_reason"]).split(":")[0] for r in rows
                                  if r["loop_status"] == status and r["loop_reason"])
    if not reasons:
        return f"{status} ({count})"
    reason, n = reasons.most_common(1)[0]
    return f"{status} ({count}{', mostly' if n < count else ''}: {reason})"


def plot(rows: Sequence[dict[str, Any]], map_poses: np.ndarray, path: Path, title: str,
         threshold: float | None = None, correct_within: float | None = None) -> Path:
    """Top-down view (map keyframes; each frame's estimated pose coloured by its loop decision; true
    positions when known), the top-1 score over the run with the decisions and their main reason,
    and the score histogram of correct vs wrong top-1 matches (where ground truth says which) -
    where a threshold would go; ``threshold``: the localizer's score_threshold, drawn on both."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 5.2), gridspec_kw={"width_ratios": [1.3, 1.3, 1]})
    if len(map_poses):
        ax.plot(map_poses[:, 0], map_poses[:, 1], ".", color="0.7", ms=4, label="map keyframes")
    colours = {"verified": "tab:green", "accepted": "tab:olive", "candidate": "tab:orange", "rejected": "tab:red"}
    truth = np.array([(float(r["truth_x"]), float(r["truth_y"])) for r in rows if r["truth_x"] != ""]).reshape(-1, 2)
    if len(truth):
        ax.plot(truth[:, 0], truth[:, 1], "-", color="tab:blue", lw=1, label="true path")
    for status, colour in colours.items():
        pts = np.array([(float(r["x"]), float(r["y"])) for r in rows if r["x"] != "" and r["loop_status"] == status])
        if len(pts):
            ax.plot(pts[:, 0], pts[:, 1], "o", ms=4, color=colour, label=f"pose, loop {status} ({len(pts)})")
    ax.set(xlabel="x (m)", ylabel="y (m)", title="top-down: map and estimated poses")
    ax.axis("equal")
    ax.legend(fontsize=7, loc="best")
    t = np.array([float(r["stamp"]) for r in rows if r["top1_score"] != ""])
    s = np.array([float(r["top1_score"]) for r in rows if r["top1_score"] != ""])
    st = [r["loop_status"] for r in rows if r["top1_score"] != ""]
    if len(t):
        ax2.plot(t - t[0], s, "-", color="0.6", lw=0.8)
        for status, colour in colours.items():
            sel = np.array([x == status for x in st])
            if sel.any():
                ax2.plot((t - t[0])[sel], s[sel], "o", ms=3, color=colour,
                         label=_decision_label(rows, status, int(sel.sum())))
    if threshold is not None:
        ax2.axhline(threshold, color="tab:orange", ls="--", lw=1, label=f"score_threshold {threshold:g}")
    ax2.set(xlabel="time since the first frame (s)", ylabel="top-1 cosine score", title="top-1 score and loop decisions")
    ax2.legend(fontsize=7)
    good = [float(r["top1_score"]) for r in rows if r["correct"] == 1]
    bad = [float(r["top1_score"]) for r in rows if r["correct"] == 0]
    if good or bad:
        bins = np.linspace(min(good + bad), max(good + bad) + 1e-6, 25)
        ax3.hist([good, bad], bins=bins, color=["tab:green", "tab:red"], label=["top-1 correct", "top-1 wrong"],
                 stacked=True)
        ax3.legend(fontsize=7)
        ax3.set(title="top-1 scores by correctness" + (f" (correct: keyframe within {correct_within:g} m "
                                                         "of the true position)" if correct_within else ""))
    else:
        ax3.hist(s, bins=25, color="tab:blue")
        ax3.set(title="top-1 scores (no ground truth)")
    if threshold is not None and (len(s) or good or bad):
        ax3.axvline(threshold, color="tab:orange", ls="--", lw=1, label=f"score_threshold {threshold:g}")
        ax3.legend(fontsize=7)
    ax3.set(xlabel="top-1 cosine score", ylabel="frames")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with replaced_atomically(path, VprError) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path
