"""Where each robot's map frame lies in a reference robot's (ROS-free): the session alignment
(:mod:`vpr_ros.mapping.sessions`) generalised to a fleet.

One verified metric closure gives one estimate of T (the other robot's map frame -> this robot's):
this robot's keyframe pose K, the other's P and the relative pose R (other base in this base)
satisfy T P = K R, so T = K R P^-1. Estimates of one pair of robots (from either robot's side; the
other side's are inverted) are combined robustly by :func:`~vpr_ros.mapping.sessions.align_session`
(the largest agreeing set, at least ``min_closures`` spread over ``min_extent_m``). Robots are then
reached from the reference through the pairs with the most agreeing closures (a robot that never
met the reference is aligned through one that did).
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Iterable

from vpr_ros.fleet.closures import InterRobotClosure
from vpr_ros.geometry import compose, inverse
from vpr_ros.mapping.sessions import SessionAlignment, align_session, closure_estimate

Pose7 = tuple[float, float, float, float, float, float, float]


@dataclass(frozen=True)
class RobotFrame:
    """Robot ``robot``'s map frame in the reference robot's (``transform``; None with ``reason``),
    reached through ``path`` (robot ids from the reference), each hop's alignment in ``hops``."""

    robot: int
    transform: Pose7 | None
    path: tuple[int, ...] = ()
    hops: tuple[SessionAlignment, ...] = field(default=())
    reason: str = ""


def pair_alignments(closures: Iterable[InterRobotClosure], min_closures: int = 3, tol_m: float = 0.15,
                    tol_deg: float = 2.0, min_extent_m: float = 1.0) -> dict[tuple[int, int], SessionAlignment]:
    """(a, b) with a < b -> the robust transform of b's map frame into a's, from every closure
    between them."""
    estimates: dict[tuple[int, int], list[tuple[Pose7, tuple[float, ...]]]] = {}
    for c in closures:
        T = closure_estimate(c.other_keyframe_pose, c.keyframe_pose, c.pose)  # other's frame -> this robot's
        a, b = c.robot.id, c.other.id
        if a < b:
            estimates.setdefault((a, b), []).append((T, c.keyframe_pose[:3]))
        elif b < a:  # the estimate inverted: a's frame -> b's; its place in b's (the smaller id's) frame
            estimates.setdefault((b, a), []).append((inverse(T), c.other_keyframe_pose[:3]))  # type: ignore[arg-type]
    return {pair: align_session([e for e, _ in items], min_closures, tol_m, tol_deg,
                                places=[p for _, p in items], min_extent_m=min_extent_m)
            for pair, items in estimates.items()}


def align_fleet(closures: Iterable[InterRobotClosure], reference: int, robots: Iterable[int],
                **kw: float) -> dict[int, RobotFrame]:
    """Every robot of ``robots``'s frame in ``reference``'s (see the module docstring); ``kw``
    goes to :func:`pair_alignments`."""
    pairs = pair_alignments(closures, **kw)  # type: ignore[arg-type]
    links: dict[int, list[tuple[int, Pose7, SessionAlignment]]] = {}
    for (a, b), al in pairs.items():
        if al.ok:
            assert al.transform is not None
            links.setdefault(a, []).append((b, al.transform, al))  # b's frame -> a's
            links.setdefault(b, []).append((a, inverse(al.transform), al))  # type: ignore[arg-type]
    identity: Pose7 = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    found: dict[int, RobotFrame] = {reference: RobotFrame(reference, identity, (reference,))}
    order = 0  # ties broken by the order links were seen (transforms are not compared)
    heap: list[tuple[int, int, int, int, Pose7, SessionAlignment]] = []
    for b, T, al in links.get(reference, []):
        heap.append((-al.inliers, order, reference, b, T, al))
        order += 1
    heapq.heapify(heap)
    while heap:  # the widest path: pairs with the most agreeing closures first
        _, _, a, b, T, al = heapq.heappop(heap)
        if b in found:
            continue
        via = found[a]
        assert via.transform is not None
        found[b] = RobotFrame(b, compose(via.transform, T), (*via.path, b), (*via.hops, al))  # type: ignore[arg-type]
        for c, Tc, alc in links.get(b, []):
            if c not in found:
                heapq.heappush(heap, (-alc.inliers, order, b, c, Tc, alc))
                order += 1
    out: dict[int, RobotFrame] = {}
    for r in robots:
        if r in found:
            out[r] = found[r]
            continue
        why = [f"with robot {b}: {al.reason}" for (a, b2), al in pairs.items() for b in (a, b2)
               if r in (a, b2) and b != r and not al.ok]
        out[r] = RobotFrame(r, None, reason="; ".join(why) or "no verified closure with an aligned robot")
    return out


def describe_frames(closures: list[InterRobotClosure], own: int) -> str:
    """Where the other robots' map frames lie in robot ``own``'s, from ``closures`` (one line for
    /diagnostics): 'robot 2: x y m, yaw deg (from n agreeing closures); robot 3: not yet (why)'."""
    import math

    others = sorted({c.other.id for c in closures if c.robot.id == own})
    if not others:
        return ""
    frames = align_fleet(closures, own, others)
    out = []
    for rid in others:
        f = frames[rid]
        if f.transform is None:
            out.append(f"robot {rid}: not yet ({f.reason})")
            continue
        T = f.transform
        yaw = math.degrees(math.atan2(2 * (T[6] * T[5] + T[3] * T[4]), 1 - 2 * (T[4] ** 2 + T[5] ** 2)))
        out.append(f"robot {rid}: {T[0]:.2f} {T[1]:.2f} m, yaw {yaw:.1f} deg (from "
                   f"{sum(h.inliers for h in f.hops)} agreeing closures)")
    return "; ".join(out)
