"""Multi-session maps (ROS-free): a new recording on a saved map starts in its own odometry frame;
verified metric loop closures against the earlier sessions' keyframes say where that frame lies
in the map's frame.

Each closure gives one estimate of the transform T (new session's frame -> map frame): the new
keyframe's pose P (its session's frame), the matched keyframe's pose K (map frame) and the verified
relative pose R (new robot in the matched keyframe's robot frame) satisfy T P = K R, so
T = K R P^-1. Estimates are combined robustly: the largest set that agrees within a translation
and a rotation tolerance (every estimate is tried as the seed) is averaged; fewer than
``min_closures`` agreeing estimates give no transform, with the reason.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from vpr_ros.geometry import compose, inverse, matrix_to_quat, quat_to_matrix

Pose7 = tuple[float, float, float, float, float, float, float]


@dataclass(frozen=True)
class SessionAlignment:
    """The transform of a session's frame into the map frame, from ``inliers`` of ``closures``
    agreeing estimates (largest deviation of an inlier from it: ``spread_m`` / ``spread_deg``)."""

    transform: Pose7 | None
    closures: int
    inliers: int
    spread_m: float = math.nan
    spread_deg: float = math.nan
    reason: str = ""
    members: tuple[int, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return self.transform is not None


def closure_estimate(new_pose: Sequence[float], matched_pose: Sequence[float],
                     relative: Sequence[float]) -> Pose7:
    """T = K R P^-1 for one verified metric closure (see the module docstring)."""
    return compose(compose(matched_pose, relative), inverse(new_pose))


def _angle_deg(a: Sequence[float], b: Sequence[float]) -> float:
    Ra, Rb = quat_to_matrix(tuple(a[3:])), quat_to_matrix(tuple(b[3:]))
    c = (np.trace(Ra.T @ Rb) - 1.0) / 2.0
    return math.degrees(math.acos(max(-1.0, min(1.0, c))))


def _average(poses: Sequence[Sequence[float]]) -> Pose7:
    """Mean position and the principal quaternion of the orientations (sign-invariant)."""
    t = np.mean([p[:3] for p in poses], axis=0)
    q = np.array([p[3:] for p in poses], np.float64)
    w, v = np.linalg.eigh(q.T @ q)
    qm = v[:, int(np.argmax(w))]
    qm = qm / np.linalg.norm(qm)
    R = quat_to_matrix(qm)
    qx, qy, qz, qw = matrix_to_quat(R)
    return (float(t[0]), float(t[1]), float(t[2]), qx, qy, qz, qw)


def align_session(estimates: Sequence[Sequence[float]], min_closures: int = 3, tol_m: float = 0.15,
                  tol_deg: float = 2.0) -> SessionAlignment:
    """The robust transform from per-closure estimates [N, 7] (see the module docstring)."""
    n = len(estimates)
    if n < min_closures:
        return SessionAlignment(None, n, 0, reason=f"{n} verified metric closure(s); {min_closures} needed")
    best: list[int] = []
    for seed in estimates:
        members = [j for j, e in enumerate(estimates)
                   if np.linalg.norm(np.subtract(e[:3], seed[:3])) <= tol_m and _angle_deg(e, seed) <= tol_deg]
        if len(members) > len(best):
            best = members
    if len(best) < min_closures:
        return SessionAlignment(None, n, len(best), reason=(
            f"the closures disagree: at most {len(best)} of {n} give the same transform (within {tol_m} m and "
            f"{tol_deg} deg); {min_closures} needed"))
    T = _average([estimates[j] for j in best])
    # a second pass around the mean: members that agree with it
    best = [j for j, e in enumerate(estimates)
            if np.linalg.norm(np.subtract(e[:3], T[:3])) <= tol_m and _angle_deg(e, T) <= tol_deg] or best
    T = _average([estimates[j] for j in best])
    spread_m = max(float(np.linalg.norm(np.subtract(estimates[j][:3], T[:3]))) for j in best)
    spread_deg = max(_angle_deg(estimates[j], T) for j in best)
    return SessionAlignment(T, n, len(best), spread_m, spread_deg, members=tuple(best))
