"""Pairing camera images with poses that arrive on their own schedule (ROS-free).

A pose stream (odometry, GPS) is usually slower than the camera and arrives after some of the
images it should be paired with. :class:`LivePoseTrack` keeps a bounded, time-sorted history
and answers, for an image stamp ``t``:

* **interpolated** when poses bracket ``t`` no more than ``max_gap`` seconds apart (position and
  GPS linearly, orientation by slerp);
* **nearest** otherwise, when a pose within ``max_age`` seconds exists and either a later pose
  has already arrived (nothing better can come) or the caller has stopped waiting;
* **wait** when no pose at or after ``t`` has arrived yet (the caller retries on the next pose,
  up to its own wall-clock limit);
* **none** when nothing usable exists.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Sequence

Pose7 = tuple[float, float, float, float, float, float, float]

READY, WAIT, NONE = "ready", "wait", "none"


@dataclass(frozen=True)
class StampedPose:
    """One pose sample: stamp (s), pose (x, y, z, qx, qy, qz, qw), optional GPS (lat, lon, alt), frame."""

    t: float
    pose: Pose7
    gps: tuple[float, float, float] | None = None
    frame: str = ""


@dataclass(frozen=True)
class Pairing:
    """Result of a lookup: ``status`` READY (with ``sample``), WAIT or NONE; ``how`` says how."""

    status: str
    sample: StampedPose | None = None
    how: str = ""


def slerp(q0: Sequence[float], q1: Sequence[float], w: float) -> tuple[float, float, float, float]:
    """Spherical interpolation of unit quaternions (x, y, z, w), ``w`` in [0, 1]."""
    dot = sum(a * b for a, b in zip(q0, q1))
    q1 = tuple(q1)
    if dot < 0.0:  # the shorter way round
        q1, dot = tuple(-c for c in q1), -dot
    if dot > 0.9995:  # nearly parallel: normalised lerp
        out = [a + w * (b - a) for a, b in zip(q0, q1)]
    else:
        theta = math.acos(min(1.0, dot))
        s0, s1 = math.sin((1 - w) * theta) / math.sin(theta), math.sin(w * theta) / math.sin(theta)
        out = [s0 * a + s1 * b for a, b in zip(q0, q1)]
    n = math.sqrt(sum(c * c for c in out)) or 1.0
    return (out[0] / n, out[1] / n, out[2] / n, out[3] / n)


def interpolate(a: StampedPose, b: StampedPose, t: float) -> StampedPose:
    """The sample at ``t`` between ``a`` and ``b`` (``a.t <= t <= b.t``)."""
    w = 0.0 if b.t == a.t else (t - a.t) / (b.t - a.t)
    pos = tuple(pa + w * (pb - pa) for pa, pb in zip(a.pose[:3], b.pose[:3]))
    gps = None
    if a.gps is not None and b.gps is not None:
        gps = tuple(ga + w * (gb - ga) for ga, gb in zip(a.gps, b.gps))
    return StampedPose(t, (*pos, *slerp(a.pose[3:], b.pose[3:], w)), gps, a.frame)  # type: ignore[arg-type]


class LivePoseTrack:
    """Bounded, time-sorted pose history with interpolating lookups (see module docstring)."""

    def __init__(self, history: int = 2000) -> None:
        self.history = history
        self._samples: list[StampedPose] = []

    def __len__(self) -> int:
        return len(self._samples)

    @property
    def latest(self) -> float | None:
        """Stamp of the newest sample."""
        return self._samples[-1].t if self._samples else None

    def add(self, sample: StampedPose) -> None:
        """Insert a sample (out-of-order arrivals are sorted in); the oldest beyond ``history`` go."""
        bisect.insort(self._samples, sample, key=lambda s: s.t)
        del self._samples[:-self.history]

    def lookup(self, t: float, max_age: float, max_gap: float, final: bool = False) -> Pairing:
        """The pose for an image at ``t``; ``final`` means the caller will not wait any longer."""
        s = self._samples
        i = bisect.bisect_left(s, t, key=lambda x: x.t)
        after = s[i] if i < len(s) else None
        before = s[i - 1] if i > 0 else None
        if after is not None and after.t == t:
            return Pairing(READY, after, "exact")
        if before is not None and after is not None and after.t - before.t <= max_gap:
            return Pairing(READY, interpolate(before, after, t), "interpolated")
        if after is None and not final:
            return Pairing(WAIT)
        near = [x for x in (before, after) if x is not None and abs(x.t - t) <= max_age]
        if near:
            best = min(near, key=lambda x: abs(x.t - t))
            return Pairing(READY, StampedPose(t, best.pose, best.gps, best.frame), "nearest")
        return Pairing(NONE)
