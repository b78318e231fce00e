"""Keyframe poses that follow the SLAM back end (ROS-free): given its optimised trajectory (the
poses of its own keyframes, e.g. LIO-SAM's ``nav_msgs/Path``), every map keyframe takes the pose
at its stamp — the path pose with that stamp, else interpolated between the two around it (no
more than ``max_gap`` s apart), else the nearest pose when it is within :data:`NEAREST_MAX_S`
(stamp rounding, not extrapolation: a short path would otherwise pull every keyframe within
``max_gap`` of its ends onto its end pose). Keyframes the path does not reach keep their pose and
are counted. A path that gives one stamp two different poses is refused."""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Sequence

from vpr_ros.errors import MapError
from vpr_ros.geometry import pose_problem
from vpr_ros.mapping.map_store import Keyframe
from vpr_ros.mapping.pose_pairing import LivePoseTrack, StampedPose



#: Largest |t_keyframe - t_pose| (s) for which a keyframe outside the path's poses takes the nearest one.
NEAREST_MAX_S = 0.05
#: Two poses of one stamp farther apart than this (m) make a path contradict itself.
SAME_STAMP_TOLERANCE_M = 1e-3


@dataclass(frozen=True)
class Reanchoring:
    """New poses by keyframe id, and the keyframes the path did not reach."""

    poses: dict[int, tuple[float, ...]]
    unreached: int
    how: dict[str, int]


def check_path(stamps: Sequence[float], poses: Sequence[Sequence[float]], where: str) -> None:
    """Refuse a path with non-finite values, non-unit quaternions or an empty pose list."""
    if not stamps:
        raise MapError(f"{where}: the path has no poses")
    first: dict[float, tuple[int, Sequence[float]]] = {}
    for k, (t, p) in enumerate(zip(stamps, poses)):
        problem = pose_problem(t, p)
        if problem:
            raise MapError(f"{where}: pose {k} (stamp {t!r}) has {problem}")
        if float(t) in first:
            j, q = first[float(t)]
            apart = math.dist(p[:3], q[:3])
            if apart > SAME_STAMP_TOLERANCE_M or any(abs(a - b) > 1e-6 for a, b in zip(p[3:], q[3:])):
                raise MapError(f"{where}: poses {j} and {k} have the same stamp {t!r} but differ ({apart:.3f} m "
                               "apart): not applied (a path gives one pose per stamp)")
        else:
            first[float(t)] = (k, p)


def reanchor(keyframes: Sequence[Keyframe], stamps: Sequence[float], poses: Sequence[Sequence[float]],
             max_gap: float, where: str = "path") -> Reanchoring:
    """New poses for ``keyframes`` from a trajectory (``stamps`` [M] s, ``poses`` [M, 7]); see the
    module docstring. Raises MapError for a path that :func:`check_path` refuses."""
    check_path(stamps, poses, where)
    track = LivePoseTrack(history=len(stamps))
    for t, p in zip(stamps, poses):
        track.add(StampedPose(float(t), tuple(float(v) for v in p)))  # type: ignore[arg-type]
    out: dict[int, tuple[float, ...]] = {}
    how: dict[str, int] = {}
    unreached = 0
    ordered = sorted(float(t) for t in stamps)
    for kf in keyframes:
        found = track.lookup(kf.stamp, max_gap, max_gap, final=True)
        if found.sample is None or (found.how == "nearest" and _nearest_dt(ordered, kf.stamp) > NEAREST_MAX_S):
            unreached += 1
            continue
        out[kf.id] = found.sample.pose
        how[found.how] = how.get(found.how, 0) + 1
    return Reanchoring(out, unreached, how)


def _nearest_dt(ordered: list[float], t: float) -> float:
    i = bisect.bisect_left(ordered, t)
    return min(abs(ordered[j] - t) for j in (i - 1, i) if 0 <= j < len(ordered))
