"""Merging several robots' maps into one (ROS-free): the inter-robot closures are found by the
same exchange the fleet nodes run (fleet codes, feature requests, verification; in-process, no
bandwidth limit), each robot's frame is aligned to the reference robot's
(:mod:`vpr_ros.fleet.alignment`), and one new map is written by one writer: every keyframe at its
pose in the reference frame, one session per robot (the reference robot's is the map's reference
session, the others aligned, with the closures that aligned them), provenance in each keyframe's
``image_ref`` (``<robot name>#<keyframe id in its own map>``, then its own reference).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

from vpr_ros.config import FleetConfig, VerificationConfig
from vpr_ros.errors import MapError
from vpr_ros.fleet.alignment import RobotFrame, align_fleet
from vpr_ros.fleet.closures import InterRobotClosure
from vpr_ros.fleet.codec import FleetCodec, Robot
from vpr_ros.fleet.peer import DESCRIPTORS, FEATURES, REQUESTS, FleetPeer
from vpr_ros.geometry import compose
from vpr_ros.mapping.map_store import VprMap
from vpr_ros.mapping.sessions import ALIGNED, REFERENCE, SessionRecord, place_extent
from vpr_ros.verification.verifier import Verifier

log = logging.getLogger(__name__)
UNLIMITED = FleetConfig(bandwidth_bytes_per_s=1e9, burst_bytes=10**9)


def offline_closures(robots: Sequence[Robot], maps: Sequence[VprMap], cfg: FleetConfig = UNLIMITED,
                     verification: VerificationConfig | None = None, max_rounds: int = 50,
                     progress: Callable[[str], None] | None = None) -> list[InterRobotClosure]:
    """Run the fleet exchange between ``maps`` (one per robot, same model) until it is quiet; every
    robot's verified closures."""
    model = maps[0].model
    for r, m in zip(robots, maps):
        m.check_model(model, where=f"the map of robot {r}")
    verifier = Verifier(verification or VerificationConfig(features=maps[0].manifest.local_features or "sift"))
    codec = FleetCodec(model)
    peers = [FleetPeer(r, codec, cfg, verifier, m.local_features) for r, m in zip(robots, maps)]
    for p, m in zip(peers, maps):
        n = len(m)
        for a in range(0, n, 4096):
            b = min(n, a + 4096)
            kfs = m.keyframes[a:b]
            p.add_own([k.id for k in kfs], [k.stamp for k in kfs], m.descriptors(a, b), [k.pose for k in kfs])
    handlers = {DESCRIPTORS: "on_descriptors", REQUESTS: "on_request", FEATURES: "on_features"}
    for round_ in range(max_rounds):
        messages = [(p, kind, data) for p in peers for kind, data in p.outgoing(float(round_))]
        if not messages and not any(p.waiting for p in peers):
            break
        for sender, kind, data in messages:
            for p in peers:
                if p is not sender:
                    getattr(p, handlers[kind])(data)
        if progress:
            progress(f"round {round_ + 1}: {len(messages)} messages, "
                     f"{sum(p.stats.verified for p in peers)} closures")
    return [c for p in peers for c in p.closures]


@dataclass(frozen=True)
class MergeReport:
    """What a merge did: each robot's frame, the closures found, keyframes written."""

    frames: dict[int, RobotFrame]
    closures: int
    keyframes: int
    left_out: dict[int, str]


def merge_maps(robots: Sequence[Robot], maps: Sequence[VprMap], out: Path, reference: int,
               closures: Sequence[InterRobotClosure], min_closures: int = 3,
               min_extent_m: float = 1.0) -> MergeReport:
    """Write the merged map to ``out`` (a new map directory; see the module docstring). Robots whose
    frame cannot be aligned are left out, with the reason."""
    ids = [r.id for r in robots]
    if reference not in ids:
        raise MapError(f"reference robot {reference} is not one of the merged robots {ids}")
    frames = align_fleet(closures, reference, ids, min_closures=min_closures, min_extent_m=min_extent_m)
    ref_map = maps[ids.index(reference)]
    merged = VprMap.create(ref_map.model, map_frame=ref_map.manifest.map_frame,
                           source="merged: " + ", ".join(f"{r.name} (id {r.id})" for r in robots))
    left_out: dict[int, str] = {}
    session = 0
    for r, m in sorted(zip(robots, maps), key=lambda rm: rm[0].id != reference):
        frame = frames[r.id]
        if frame.transform is None:
            left_out[r.id] = frame.reason
            log.warning("robot %s left out: %s", r, frame.reason)
            continue
        T = frame.transform
        n = len(m)
        for a in range(0, n, 4096):
            b = min(n, a + 4096)
            kfs = [replace(k, id=-1, pose=tuple(compose(T, k.pose)), session=session,
                           image_ref=f"{r.name}#{k.id}" + (f" {k.image_ref}" if k.image_ref else ""))
                   for k in m.keyframes[a:b]]
            feats = [m.local_features(i) for i in range(a, b)]
            merged.add(m.descriptors(a, b), kfs, feats if any(f is not None for f in feats) else None)
        if r.id == reference:
            merged.set_session_record(session, SessionRecord(REFERENCE, f"robot {r.name} (id {r.id})"))
        else:
            hops = frame.hops
            places = [c.keyframe_pose if c.robot.id == r.id else c.other_keyframe_pose for c in closures
                      if r.id in (c.robot.id, c.other.id)]
            merged.set_session_record(session, SessionRecord(
                ALIGNED, f"robot {r.name} (id {r.id}), through robots {' -> '.join(map(str, frame.path))}", T,
                closures=sum(h.closures for h in hops), inliers=sum(h.inliers for h in hops),
                spread_m=max(h.spread_m for h in hops), spread_deg=max(h.spread_deg for h in hops),
                extent_m=place_extent(places) if places else 0.0, anchors=(0,)))
        session += 1
    merged.save(out)
    count = len(merged)
    merged.close()
    return MergeReport(frames, len(closures), count, left_out)
