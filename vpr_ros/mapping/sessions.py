"""Multi-session maps (ROS-free): a new recording on a saved map starts in its own odometry frame;
verified metric loop closures against the earlier sessions' keyframes say where that frame lies
in the map's frame.

Each closure gives one estimate of the transform T (new session's frame -> map frame): the new
keyframe's pose P (its session's frame), the matched keyframe's pose K (map frame) and the verified
relative pose R (new robot in the matched keyframe's robot frame) satisfy T P = K R, so
T = K R P^-1. Estimates are combined robustly: the largest set that agrees within a translation
and a rotation tolerance (every estimate is tried as the seed) is averaged; fewer than
``min_closures`` agreeing estimates give no transform, with the reason, and so do agreeing ones
all taken within ``min_extent_m`` of each other (three closures at one spot are no evidence
against an identical-looking place elsewhere).

:class:`SessionAligner` keeps using the closures that come after: each is checked against the
transform in use (a disagreement is counted and reported), and the transform is re-estimated from
the most recent ``window`` closures when their consensus moved away from it (odometry drift, or a
jump), so keyframes taken after that follow the new estimate. :class:`SessionRecord` is what the
map stores per session (``meta['sessions']``): reference, aligned (from how many closures, with
which residuals) or unaligned with the reason. Only the reference session and aligned sessions
anchor another session's alignment.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Sequence

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
                  tol_deg: float = 2.0, places: Sequence[Sequence[float]] | None = None,
                  min_extent_m: float = 0.0) -> SessionAlignment:
    """The robust transform from per-closure estimates [N, 7] (see the module docstring);
    ``places`` [N, >=3]: where each closure was taken (the new keyframe's position), whose inliers
    must span at least ``min_extent_m``."""
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
    if places is not None and min_extent_m > 0:
        extent = place_extent([places[j] for j in best])
        if extent < min_extent_m:
            return SessionAlignment(None, n, len(best), spread_m, spread_deg, reason=(
                f"{len(best)} agreeing closures, but all within {extent:.2f} m of each other ({min_extent_m:g} m "
                "needed: closures at one spot are no evidence against a look-alike place)"), members=tuple(best))
    return SessionAlignment(T, n, len(best), spread_m, spread_deg, members=tuple(best))


def place_extent(places: Sequence[Sequence[float]]) -> float:
    """Largest distance (m) between two of ``places`` (positions, first 3 values used)."""
    pts = np.array([p[:3] for p in places], np.float64).reshape(-1, 3)
    if len(pts) < 2:
        return 0.0
    return float(np.max(np.linalg.norm(pts[:, None, :] - pts[None, :, :], axis=2)))


def pose_difference(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """(metres, degrees) between two poses."""
    return float(np.linalg.norm(np.subtract(a[:3], b[:3]))), _angle_deg(a, b)


def landing_difference(a: Sequence[float], b: Sequence[float], at: Sequence[float]) -> tuple[float, float]:
    """(metres, degrees) between where transforms ``a`` and ``b`` put the pose ``at``."""
    return pose_difference(compose(a, at), compose(b, at))


def average_at(transforms: Sequence[Sequence[float]], at: Sequence[float]) -> Pose7:
    """The transform whose rotation is the mean of ``transforms``' and that puts ``at`` at the mean
    of where they put it (a plain mean of translations would move a far pose by the lever arm)."""
    R = _average(transforms)
    landing = np.mean([compose(t, at)[:3] for t in transforms], axis=0)
    moved = compose(R, at)
    shift = np.asarray(landing) - np.asarray(moved[:3])
    return (float(R[0] + shift[0]), float(R[1] + shift[1]), float(R[2] + shift[2]), *R[3:])  # type: ignore[return-value]


REFERENCE, ALIGNED, UNALIGNED = "reference", "aligned", "unaligned"


@dataclass(frozen=True)
class SessionRecord:
    """A session's alignment as the map stores it. ``transform``: session frame -> map frame in
    use (x y z qx qy qz qw; None unless aligned); ``closures`` / ``inliers`` / ``spread_*``: the
    estimate it came from; ``extent_m``: how far apart its closures were taken; ``anchors``: the
    sessions they matched; ``disagreeing``: later closures farther than the tolerance from it;
    ``updates``: times it was re-estimated from later closures."""

    state: str
    reason: str = ""
    transform: tuple[float, ...] | None = None
    closures: int = 0
    inliers: int = 0
    spread_m: float = 0.0
    spread_deg: float = 0.0
    extent_m: float = 0.0
    anchors: tuple[int, ...] = ()
    disagreeing: int = 0
    updates: int = 0

    @property
    def anchor(self) -> bool:
        """May closures with this session's keyframes align another session?"""
        return self.state in (REFERENCE, ALIGNED)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["transform"] = list(self.transform) if self.transform is not None else None
        d["anchors"] = list(self.anchors)
        for k in ("spread_m", "spread_deg", "extent_m"):
            d[k] = float(d[k]) if math.isfinite(d[k]) else 0.0
        return d

    @classmethod
    def from_json(cls, d: Any, where: str) -> "SessionRecord":
        """Validated; ValueError naming ``where`` and the field otherwise."""
        if not isinstance(d, dict) or set(d) - {f for f in cls.__dataclass_fields__}:
            raise ValueError(f"{where}: not a session record ({d!r:.80})")
        state = d.get("state")
        if state not in (REFERENCE, ALIGNED, UNALIGNED):
            raise ValueError(f"{where}: state {state!r} is not reference, aligned or unaligned")
        t = d.get("transform")
        if t is not None and not (isinstance(t, list) and len(t) == 7 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in t)):
            raise ValueError(f"{where}: transform must be 7 finite numbers, got {t!r:.80}")
        if (state == ALIGNED) != (t is not None):
            raise ValueError(f"{where}: an {state} session {'needs' if state == ALIGNED else 'has no'} transform")
        ints = {k: d.get(k, 0) for k in ("closures", "inliers", "disagreeing", "updates")}
        floats = {k: d.get(k, 0.0) for k in ("spread_m", "spread_deg", "extent_m")}
        anchors = d.get("anchors", [])
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in ints.values()) or \
                not all(isinstance(v, (int, float)) and math.isfinite(v) for v in floats.values()) or \
                not (isinstance(anchors, list) and all(isinstance(a, int) for a in anchors)) or \
                not isinstance(d.get("reason", ""), str):
            raise ValueError(f"{where}: malformed counts, residuals, anchors or reason")
        return cls(state, d.get("reason", ""), tuple(float(v) for v in t) if t is not None else None,
                   closures=ints["closures"], inliers=ints["inliers"], spread_m=float(floats["spread_m"]),
                   spread_deg=float(floats["spread_deg"]), extent_m=float(floats["extent_m"]),
                   anchors=tuple(anchors), disagreeing=ints["disagreeing"], updates=ints["updates"])

    def describe(self) -> str:
        """One line for map_info and /diagnostics."""
        if self.state == REFERENCE:
            return "reference (the map's frame)"
        if self.state == UNALIGNED:
            return f"unaligned: {self.reason}"
        text = (f"aligned from {self.inliers} of {self.closures} closures with session(s) "
                f"{', '.join(map(str, self.anchors)) or '?'} (spread {self.spread_m * 100:.1f} cm, "
                f"{self.spread_deg:.2f} deg, over {self.extent_m:.1f} m)")
        if self.updates:
            text += f"; re-estimated {self.updates} time(s) from later closures"
        if self.disagreeing:
            text += f"; {self.disagreeing} later closure(s) disagreed"
        return text


@dataclass
class AlignmentEvent:
    """What one closure did: 'collected' (not aligned yet), 'aligned', 'agrees', 'disagrees',
    'updated' (the transform in use changed), with the record after it and a sentence."""

    kind: str
    record: SessionRecord
    text: str = ""
    shift_m: float = 0.0
    shift_deg: float = 0.0
    since: int = -1  # 'updated': index (in the order added) of the oldest closure of the new consensus


class SessionAligner:
    """The alignment of one session, fed closure by closure (see the module docstring)."""

    def __init__(self, min_closures: int = 3, min_extent_m: float = 2.0, window: int = 8, tol_m: float = 0.15,
                 tol_deg: float = 2.0) -> None:
        self.min_closures, self.min_extent_m, self.window = min_closures, min_extent_m, max(window, min_closures)
        self.tol_m, self.tol_deg = tol_m, tol_deg
        self.estimates: list[Pose7] = []
        self.places: list[tuple[float, ...]] = []
        self.anchors: list[int] = []
        self.record = SessionRecord(UNALIGNED, "no verified metric closure with an aligned session yet")

    @property
    def transform(self) -> tuple[float, ...] | None:
        return self.record.transform

    def add(self, new_pose: Sequence[float], matched_pose: Sequence[float], relative: Sequence[float],
            anchor: int) -> AlignmentEvent:
        """One verified metric closure: ``new_pose`` in this session's own frame, ``matched_pose``
        in the map's, ``relative`` the new robot in the matched keyframe's robot frame."""
        e = closure_estimate(new_pose, matched_pose, relative)
        self.estimates.append(e)
        self.places.append(tuple(float(v) for v in new_pose[:3]))
        self.anchors.append(int(anchor))
        if self.record.transform is None:
            return self._first_alignment()
        # compared where they put this keyframe (a rotation far from the session's origin would
        # otherwise count as a large translation): what matters is where keyframes land
        at = new_pose
        dm, dd = landing_difference(e, self.record.transform, at)
        agrees = dm <= self.tol_m and dd <= self.tol_deg
        rec = self.record if agrees else replace(self.record, disagreeing=self.record.disagreeing + 1)
        recent = self.estimates[-self.window:]
        # the recent closures that agree with the newest one: enough of them move the transform
        members = [j for j, r in enumerate(recent)
                   if (lambda d: d[0] <= self.tol_m and d[1] <= self.tol_deg)(landing_difference(r, e, at))]
        if len(members) >= self.min_closures:
            new = average_at([recent[j] for j in members], at)
            sm, sd = landing_difference(new, self.record.transform, at)
            if sm > self.tol_m / 2 or sd > self.tol_deg / 2:  # the recent consensus moved: follow it
                first = len(self.estimates) - len(recent)
                spread = [landing_difference(recent[j], new, at) for j in members]
                self.record = replace(rec, transform=new, closures=len(self.estimates), inliers=len(members),
                                      spread_m=max(d[0] for d in spread), spread_deg=max(d[1] for d in spread),
                                      updates=rec.updates + 1,
                                      anchors=tuple(sorted({self.anchors[first + j] for j in members})))
                return AlignmentEvent("updated", self.record, (
                    f"re-estimated from {len(members)} of the last {len(recent)} closures: moves this place by "
                    f"{sm * 100:.1f} cm and {sd:.2f} deg (odometry drift or a jump)"), sm, sd, first + members[0])
        self.record = replace(rec, closures=len(self.estimates))
        if agrees:
            return AlignmentEvent("agrees", self.record)
        return AlignmentEvent("disagrees", self.record, (
            f"a closure disagrees with the alignment in use by {dm * 100:.1f} cm and {dd:.2f} deg "
            f"({self.record.disagreeing} so far); the transform follows only when the recent closures agree"), dm, dd)

    def _first_alignment(self) -> AlignmentEvent:
        a = align_session(self.estimates, self.min_closures, self.tol_m, self.tol_deg, self.places,
                          self.min_extent_m)
        if not a.ok or a.transform is None:
            self.record = replace(self.record, reason=a.reason, closures=len(self.estimates), inliers=a.inliers)
            return AlignmentEvent("collected", self.record, a.reason)
        extent = place_extent([self.places[j] for j in a.members])
        self.record = SessionRecord(ALIGNED, "", a.transform, len(self.estimates), a.inliers, a.spread_m,
                                    a.spread_deg, extent, tuple(sorted({self.anchors[j] for j in a.members})))
        return AlignmentEvent("aligned", self.record, self.record.describe())
