"""A recording session's place in the map while it is being recorded (ROS-free; the map builder
node runs it, and so does ``benchmarks/session_alignment.py``).

A session on a map with earlier keyframes starts unaligned (stored so, with the reason, at its
first keyframe). Verified metric closures with keyframes of the reference session or of an
aligned one feed a :class:`~vpr_ros.mapping.sessions.SessionAligner`; closures with an unaligned
session are counted and ignored. When the session is aligned its keyframes so far move into the
map frame; from then on new keyframes are placed with the transform in use, which later closures
check and move (drift, jumps): the keyframes from the oldest closure of the new consensus on are
placed again with it (after a jump, those between the jump and its detection). Every change of
state is stored with the map.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from vpr_ros.geometry import compose, inverse
from vpr_ros.mapping.map_store import Keyframe, VprMap
from vpr_ros.mapping.sessions import AlignmentEvent, SessionAligner

#: verified metric closures with the earlier sessions needed before a session is aligned
MIN_ALIGNMENT_CLOSURES = 3
#: ... taken at least this far apart (m): three closures at one spot prove nothing against a look-alike
MIN_ALIGNMENT_EXTENT_M = 2.0


class SessionTracker:
    """Alignment of ``vmap``'s session ``session`` (its builder's). ``closing``: live loop closure
    is on (else the session stays unaligned, and says why)."""

    def __init__(self, vmap: VprMap, session: int, closing: bool, min_closures: int = MIN_ALIGNMENT_CLOSURES,
                 min_extent_m: float = MIN_ALIGNMENT_EXTENT_M, follow: bool = True) -> None:
        self.map, self.session, self.closing = vmap, session, closing
        self.aligner = SessionAligner(min_closures, min_extent_m, window=8 if follow else 10**9)
        self.follow = follow  # False: the first transform is kept (what vpr_ros 0.4 did; for comparison)
        self.ignored = 0      # closures with sessions that are not aligned themselves
        self._started = False
        self._own: dict[int, tuple[float, ...]] = {}  # keyframe id -> its pose in this session's frame
        self._stamps: list[float] = []                # stamp of each closure the aligner took

    @property
    def transform(self) -> tuple[float, ...] | None:
        """This session's frame in the map frame (None until aligned)."""
        return self.aligner.transform

    def pose_in_map(self, pose: Sequence[float]) -> tuple[float, ...]:
        """Where a keyframe pose of this session (its own frame) goes in the map."""
        T = self.transform
        return tuple(compose(T, pose)) if T is not None else tuple(pose)

    def added(self, keyframe: Keyframe) -> None:
        """Call when a keyframe of this session is stored (at its map pose): remembers its own-frame
        pose; the first one records the session as unaligned (with the reason)."""
        T = self.transform
        self._own[keyframe.id] = tuple(compose(inverse(T), keyframe.pose)) if T is not None else tuple(keyframe.pose)
        if self._started:
            return
        self._started = True
        if self.session == 0 or self.session in self.map.session_records:
            return
        reason = (self.aligner.record.reason if self.closing else
                  "live loop closure is off (loop_closure.enabled false): no alignment attempted")
        self.map.set_session_record(self.session, replace(self.aligner.record, reason=reason))

    def closure(self, matched: Keyframe, new_pose: Sequence[float], relative: Sequence[float],
                stamp: float) -> AlignmentEvent | None:
        """A verified metric closure of this session's keyframe at ``new_pose`` (its own frame,
        stamp ``stamp``) with the earlier keyframe ``matched``; None when ``matched``'s session may
        not anchor."""
        if not self.map.session_record(matched.session).anchor:
            self.ignored += 1
            return None
        if not self.follow and self.aligner.transform is not None:
            return AlignmentEvent("agrees", self.aligner.record)
        event = self.aligner.add(new_pose, matched.pose, relative, matched.session)
        self._stamps.append(float(stamp))
        T = event.record.transform
        if T is not None and event.kind == "aligned":
            self.map.update_poses({i: compose(T, p) for i, p in self._own.items()})
        elif T is not None and event.kind == "updated":
            since = self._stamps[event.since]
            self.map.update_poses({i: compose(T, p) for i, p in self._own.items()
                                   if self.map.keyframes[i].stamp >= since})
        self.map.set_session_record(self.session, event.record)
        return event
