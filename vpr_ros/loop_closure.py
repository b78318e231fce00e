"""Loop-closure acceptance: threshold, time separation, temporal consistency, rate limit.

ROS-free. One :class:`LoopClosureDetector` per robot; feed it the top-1 match of each
query in time order. It publishes ``[t_query, t_match]`` pairs (the LIO-SAM external
loop-closure format) only for matches that pass every rule.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

CANDIDATE, VERIFIED, ACCEPTED, REJECTED = "candidate", "verified", "accepted", "rejected"
#: loop_closure_table codes: 1 published (verified by geometry, or accepted on the temporal rules
#: alone when verification is off: the label says which), 0 candidate, -1 rejected
STATUS_CODES = {CANDIDATE: 0.0, VERIFIED: 1.0, ACCEPTED: 1.0, REJECTED: -1.0}
PUBLISHED = (VERIFIED, ACCEPTED)


@dataclass(frozen=True)
class LoopDecision:
    """What happened to one query's top-1 match.

    ``status``: 'verified' (publish it: its geometry was verified), 'accepted' (publish it on the
    temporal rules alone: no geometric verification was asked for), 'candidate' (plausible,
    waiting for consistency or rate limit), 'rejected' (fails a rule; ``reason`` says which).
    """

    t_query: float
    t_match: float
    db_id: int
    score: float
    status: str
    streak: int
    reason: str = ""
    verification: Any = None  # vpr_ros.verification.verifier.Verification when geometry was checked

    @property
    def publish(self) -> bool:
        return self.status in PUBLISHED


class LoopClosureDetector:
    """Applies the rules in order: score threshold, minimum time separation, temporal
    consistency (``consistency`` consecutive queries whose matches lie within ``window``
    keyframe ids of each other), then a rate limit on query time."""

    def __init__(self, score_threshold: float, min_time_separation: float = 30.0,
                 consistency: int = 3, window: int = 3, max_rate: float = 1.0) -> None:
        self.score_threshold = score_threshold
        self.min_time_separation = min_time_separation
        self.consistency = consistency
        self.window = window
        self.min_period = 1.0 / max_rate
        self._streak = 0
        self._last_id: int | None = None
        self.last_published: float | None = None
        self.published = 0
        self.stamps_back = 0  # queries stamped before the last published closure (clock jump, bad stamp)
        self.refused = 0  # passed the temporal rules but not the geometric verification

    def reset(self) -> None:
        """Forget the streak (e.g. after a map reload)."""
        self._streak, self._last_id = 0, None

    def update(self, t_query: float, t_match: float, db_id: int, score: float,
               verify: Callable[[], Any] | None = None) -> LoopDecision:
        """Decide on one query's top-1 match. ``verify`` (optional) is called only for a match that
        passed every other rule; its result (``.verified``, ``.reason``) decides, and a refused match
        does not count against the rate limit."""
        def decide(status: str, reason: str = "") -> LoopDecision:
            return LoopDecision(t_query, t_match, db_id, score, status, self._streak, reason)

        if score < self.score_threshold:
            self.reset()
            return decide(REJECTED, "score below threshold")
        if abs(t_query - t_match) < self.min_time_separation:
            self.reset()
            return decide(REJECTED, "match too recent")
        if self._last_id is not None and abs(db_id - self._last_id) <= self.window:
            self._streak += 1
        else:
            self._streak = 1
        self._last_id = db_id
        if self._streak < self.consistency:
            return decide(CANDIDATE, "waiting for temporal consistency")
        if self.last_published is not None and t_query < self.last_published:
            # time went back (a bag restarted, /clock reset) or the last closure came from a frame with a
            # wrong future stamp: forget it, or that stamp would rate-limit every closure from now on
            self.stamps_back += 1
            self.last_published = None
        if self.last_published is not None and t_query - self.last_published < self.min_period:
            return decide(CANDIDATE, "rate limited")
        if verify is not None:
            v = verify()
            if not v.verified:
                self.refused += 1
                return replace(decide(REJECTED, f"geometric verification failed: {v.reason}"), verification=v)
            self.last_published = t_query
            self.published += 1
            return replace(decide(VERIFIED), verification=v)
        self.last_published = t_query
        self.published += 1
        return decide(ACCEPTED, "temporal rules only (no geometric verification)")
