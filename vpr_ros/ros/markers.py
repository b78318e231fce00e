"""RViz markers: the map's keyframes, and each query's matches coloured by score."""
from __future__ import annotations

from typing import Any

from builtin_interfaces.msg import Duration
from geometry_msgs.msg import Point
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

from vpr_ros.localization import LocalizationResult
from vpr_ros.mapping.map_store import VprMap
from vpr_ros.ros.conversions import pose_msg


def _score_colour(score: float) -> ColorRGBA:
    s = min(1.0, max(0.0, (score - 0.5) * 2.0))  # red (<= 0.5) .. green (1.0)
    return ColorRGBA(r=1.0 - s, g=s, b=0.1, a=0.9)


def keyframe_markers(vmap: VprMap, frame: str, stamp: Any) -> MarkerArray:
    """One POINTS marker (namespace 'keyframes') with every keyframe position."""
    m = Marker(ns="keyframes", id=0, type=Marker.POINTS, action=Marker.ADD)
    m.header.frame_id, m.header.stamp = frame, stamp
    m.scale.x = m.scale.y = 0.3
    m.color = ColorRGBA(r=0.3, g=0.5, b=1.0, a=0.8)
    m.pose.orientation.w = 1.0
    m.points = [Point(x=float(k.pose[0]), y=float(k.pose[1]), z=float(k.pose[2])) for k in vmap.keyframes]
    return MarkerArray(markers=[m])


def match_markers(r: LocalizationResult, frame: str, stamp: Any, lifetime_s: float = 2.0) -> MarkerArray:
    """Spheres on the top-K matched keyframes (colour = score), lines from the top-1 to the others,
    and the top-1 score as text (namespace 'matches')."""
    life = Duration(sec=int(lifetime_s), nanosec=int((lifetime_s % 1) * 1e9))
    out = []
    for m in r.matches:
        s = Marker(ns="matches", id=m.rank, type=Marker.SPHERE, action=Marker.ADD, lifetime=life)
        s.header.frame_id, s.header.stamp = frame, stamp
        s.pose = pose_msg(m.keyframe.pose)
        s.scale.x = s.scale.y = s.scale.z = 0.8 if m.rank == 0 else 0.5
        s.color = _score_colour(m.score)
        out.append(s)
    if r.matches:
        top = r.matches[0].keyframe.pose
        lines = Marker(ns="matches", id=100, type=Marker.LINE_LIST, action=Marker.ADD, lifetime=life)
        lines.header.frame_id, lines.header.stamp = frame, stamp
        lines.scale.x = 0.05
        lines.color = ColorRGBA(r=1.0, g=1.0, b=1.0, a=0.6)
        lines.pose.orientation.w = 1.0
        for m in r.matches[1:]:
            lines.points += [Point(x=float(top[0]), y=float(top[1]), z=float(top[2])),
                             Point(x=float(m.keyframe.pose[0]), y=float(m.keyframe.pose[1]), z=float(m.keyframe.pose[2]))]
        text = Marker(ns="matches", id=101, type=Marker.TEXT_VIEW_FACING, action=Marker.ADD, lifetime=life)
        text.header.frame_id, text.header.stamp = frame, stamp
        text.pose = pose_msg(top)
        text.pose.position.z += 1.5
        text.scale.z = 0.6
        text.color = _score_colour(r.matches[0].score)
        text.text = f"{r.matches[0].db_id}: {r.matches[0].score:.2f}" + ("" if r.accepted else " (rejected)")
        out += [lines, text]
    return MarkerArray(markers=out)
