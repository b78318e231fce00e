"""One robot of a fleet (ROS-free): shares its keyframes, proposes candidates, asks for the features
of the other robot's keyframe only for those, answers the others' requests, and verifies.

Everything it sends comes out of one :class:`~vpr_ros.fleet.exchange.ByteBudget`, in this order:
replies to the others' requests (a robot is waiting for them), its own requests, then descriptor
packets. Messages may be lost, duplicated or reordered: a request that gets no reply is asked
again after ``features_timeout``; a duplicated reply finds its candidate already settled.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Sequence, TypeVar

import numpy as np

from vpr_ros.config import FleetConfig
from vpr_ros.errors import FleetError, ForeignModel
from vpr_ros.fleet.closures import InterRobotClosure, closure_of
from vpr_ros.fleet.codec import FleetCodec, Robot
from vpr_ros.fleet.exchange import ByteBudget, Candidate, CandidateMatcher, DescriptorSharer
from vpr_ros.fleet.features_wire import (MAX_REQUEST, decode_features, decode_request, encode_features,
                                         encode_request)
from vpr_ros.verification.features import LocalFeatures
from vpr_ros.verification.verifier import Verifier

T = TypeVar("T")
DESCRIPTORS, REQUESTS, FEATURES = "descriptors", "requests", "features"
MAX_QUEUED_REPLIES = 256  # requests from others waiting for budget (older ones dropped: they ask again)


@dataclass
class _Wanted:
    """Their keyframe, the own keyframes it was proposed for, and when it was last asked for."""

    candidates: list[Candidate]
    asked_at: float | None = None


@dataclass
class FleetStats:
    """What the robot has sent and found (bytes by kind, closures, refusals)."""

    sent_bytes: dict[str, int] = field(default_factory=lambda: {DESCRIPTORS: 0, REQUESTS: 0, FEATURES: 0})
    candidates: int = 0
    verified: int = 0
    refused: int = 0
    last_refusal: str = ""


class FleetPeer:
    """``robot`` with its model's ``codec``; ``features`` gives its own keyframe's stored local
    features (None when it has none)."""

    def __init__(self, robot: Robot, codec: FleetCodec, cfg: FleetConfig, verifier: Verifier,
                 features: Callable[[int], LocalFeatures | None]) -> None:
        self.robot, self.codec, self.cfg, self.verifier, self._features = robot, codec, cfg, verifier, features
        self.budget = ByteBudget(cfg.bandwidth_bytes_per_s, cfg.burst_bytes)
        self.sharer = DescriptorSharer(codec, robot, self.budget, cfg.per_packet)
        self.matcher = CandidateMatcher(codec, robot, cfg.threshold, cfg.top_k)
        self._wanted: OrderedDict[tuple[int, int], _Wanted] = OrderedDict()  # (robot id, their keyframe)
        self._settled: set[tuple[int, int]] = set()
        self._replies: OrderedDict[tuple[int, int], tuple[Robot, int, float, int]] = OrderedDict()
        self._stamps: dict[int, float] = {}   # own keyframe id -> stamp (for replies)
        self._poses: dict[int, tuple[float, ...]] = {}  # own keyframe id -> base pose in this robot's map frame
        self._seq = 0
        self.closures: list[InterRobotClosure] = []
        self.stats = FleetStats()

    # ------------------------------------------------------------------ inputs
    def add_own(self, keyframe_ids: Sequence[int], stamps: Sequence[float], descriptors: np.ndarray,
                poses: Sequence[Sequence[float]]) -> None:
        """This robot's new keyframes (ids, stamps, descriptors [N, D], base poses [N, 7] in its map
        frame): queued to be shared and matched against what was received."""
        if not len(keyframe_ids):
            return
        self._stamps.update((int(i), float(s)) for i, s in zip(keyframe_ids, stamps))
        self._poses.update((int(i), tuple(float(v) for v in p)) for i, p in zip(keyframe_ids, poses))
        self.sharer.add(keyframe_ids, stamps, descriptors)
        self._want(self.matcher.add_own(keyframe_ids, stamps, descriptors))

    def on_descriptors(self, data: bytes) -> None:
        """A descriptor packet from the fleet topic (FleetError: refused, with the reason; a robot
        of another model is refused once, its later messages are ignored)."""
        self._want(self.matcher.receive(data))

    def _decode(self, decode: Callable[[FleetCodec, bytes], T], data: bytes) -> T | None:
        try:
            return decode(self.codec, data)
        except ForeignModel as exc:
            rid = exc.robot.id  # type: ignore[attr-defined]
            if rid in self.matcher.refused:
                return None
            self.matcher.refused[rid] = str(exc)
            raise

    def on_request(self, data: bytes) -> None:
        """A feature request: queued for a reply when it is addressed to this robot."""
        req = self._decode(decode_request, data)
        if req is None:
            return
        if req.to.id != self.robot.id or req.sender.id == self.robot.id:
            return
        self.matcher.check_name(req.sender)
        learned = []
        for mine, theirs, score in req.pairs:
            if mine not in self._stamps:
                continue  # not one of ours (yet): the requester asks again after its timeout
            if (req.sender.id, mine) not in self._replies:  # one reply per keyframe, whatever it was paired with
                self._replies[(req.sender.id, mine)] = (req.sender, mine, self._stamps[mine], theirs)
            learned.append(Candidate(req.sender, theirs, float("nan"), mine, self._stamps[mine], score))
        self._want(learned)  # verified on this side too: ask for the requester's features in turn
        while len(self._replies) > MAX_QUEUED_REPLIES:
            self._replies.popitem(last=False)

    def on_features(self, data: bytes) -> list[InterRobotClosure]:
        """Another robot's features for one of this robot's requests: verified against every own
        keyframe it was proposed for; the closures found (the one with most inliers kept)."""
        reply = self._decode(decode_features, data)
        if reply is None:
            return []
        key = (reply.sender.id, reply.keyframe)
        if reply.to.id != self.robot.id or key not in self._wanted:
            return []  # someone else's, or a duplicate of a settled one
        self.matcher.check_name(reply.sender)
        wanted = self._wanted.pop(key)
        self._settled.add(key)
        best: InterRobotClosure | None = None
        for c in wanted.candidates:
            own = self._features(c.own_keyframe)
            if own is None:
                why = f"keyframe {c.own_keyframe} has no stored local features"
                closure = None
            else:
                closure, why = closure_of(self.verifier, self.robot, c.own_keyframe, c.own_stamp, own, reply.sender,
                                          reply.keyframe, reply.stamp, reply.features, c.score,
                                          tuple(self.cfg.camera_pose_in_base), reply.camera_in_base,
                                          self._poses[c.own_keyframe], reply.pose)  # type: ignore[arg-type]
            if closure is None:
                self.stats.refused += 1
                self.stats.last_refusal = (f"robot {reply.sender} keyframe {reply.keyframe} vs own "
                                           f"{c.own_keyframe}: {why}")
            elif best is None or closure.inliers > best.inliers:
                best = closure
        if best is None:
            return []
        self.stats.verified += 1
        self.closures.append(best)
        return [best]

    def _want(self, candidates: list[Candidate]) -> None:
        for c in candidates:
            key = (c.robot.id, c.keyframe)
            if key in self._settled:
                continue
            self.stats.candidates += 1
            w = self._wanted.setdefault(key, _Wanted([]))
            if all(o.own_keyframe != c.own_keyframe for o in w.candidates):
                w.candidates.append(c)

    # ------------------------------------------------------------------ outputs
    def outgoing(self, now: float) -> list[tuple[str, bytes]]:
        """(topic kind, message) the budget allows at ``now``: replies, then requests, then descriptors."""
        out: list[tuple[str, bytes]] = []
        while self._replies:
            (rid, mine), (to, _, stamp, theirs) = next(iter(self._replies.items()))
            f = self._features(mine)
            if f is None:
                self._replies.popitem(last=False)
                continue
            try:
                msg = encode_features(self.codec, self.robot, to, self._next_seq(), mine, stamp, theirs,
                                      strongest(f, self.cfg.reply_features), tuple(self.cfg.camera_pose_in_base),
                                      self._poses[mine])
                if len(msg) > self.budget.burst:
                    raise FleetError(f"the features of keyframe {mine} take {len(msg)} bytes, more than the "
                                     f"burst of {self.budget.burst:.0f}: raise fleet.burst_bytes or lower "
                                     "fleet.reply_features")
            except FleetError as exc:  # features this budget or wire cannot carry: said, the request dropped
                self._replies.popitem(last=False)
                self.stats.last_refusal = str(exc)
                continue
            if not self.budget.take(len(msg), now):
                return out
            self._replies.popitem(last=False)
            out.append((FEATURES, msg))
            self.stats.sent_bytes[FEATURES] += len(msg)
        by_robot: dict[int, list[tuple[tuple[int, int], _Wanted]]] = {}
        for key, w in self._wanted.items():
            if w.asked_at is None or now - w.asked_at >= self.cfg.features_timeout or now < w.asked_at:
                by_robot.setdefault(key[0], []).append((key, w))
        for items in by_robot.values():
            # every proposed pair is named (the receiver verifies them all on its side too), best first
            pairs = [(key[1], c.own_keyframe, c.score, w) for key, w in items
                     for c in sorted(w.candidates, key=lambda c: -c.score)]
            for a in range(0, len(pairs), MAX_REQUEST):
                part = pairs[a:a + MAX_REQUEST]
                to = part[0][3].candidates[0].robot
                msg = encode_request(self.codec, self.robot, to, self._next_seq(),
                                     [(theirs, own, score) for theirs, own, score, _ in part])
                if not self.budget.take(len(msg), now):
                    return out
                for *_, w in part:
                    w.asked_at = now
                out.append((REQUESTS, msg))
                self.stats.sent_bytes[REQUESTS] += len(msg)
        for msg in self.sharer.packets(now):
            out.append((DESCRIPTORS, msg))
            self.stats.sent_bytes[DESCRIPTORS] += len(msg)
        return out

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    @property
    def waiting(self) -> int:
        """Candidates whose features have not arrived yet."""
        return len(self._wanted)


def strongest(f: LocalFeatures, n: int) -> LocalFeatures:
    """At most ``n`` of ``f``'s features, those with 3-D points first (they make a metric pose),
    in their stored order otherwise."""
    if len(f) <= n:
        return f
    from dataclasses import replace

    if f.points3d is not None:
        order = np.argsort(~np.isfinite(f.points3d).all(axis=1), kind="stable")[:n]
    else:
        order = np.arange(n)
    order = np.sort(order)
    return replace(f, keypoints=f.keypoints[order], descriptors=f.descriptors[order],
                   points3d=None if f.points3d is None else f.points3d[order])
