"""Small pose helpers. A pose is (x, y, z, qx, qy, qz, qw); units metres and radians."""
from __future__ import annotations

import math
from typing import Sequence

Pose = tuple[float, float, float, float, float, float, float]


def yaw_quaternion(yaw: float) -> tuple[float, float, float, float]:
    """Quaternion (qx, qy, qz, qw) of a rotation by ``yaw`` radians about z."""
    return (0.0, 0.0, math.sin(yaw / 2.0), math.cos(yaw / 2.0))


def planar_pose(x: float, y: float, yaw: float = 0.0) -> Pose:
    """Pose on the ground plane."""
    return (float(x), float(y), 0.0, *yaw_quaternion(yaw))


def translation_distance(a: Sequence[float], b: Sequence[float]) -> float:
    """Euclidean distance between the positions of two poses (m)."""
    return math.dist(a[:3], b[:3])


def rotation_angle(a: Sequence[float], b: Sequence[float]) -> float:
    """Angle (rad) of the relative rotation between two poses' unit quaternions."""
    dot = abs(sum(x * y for x, y in zip(a[3:7], b[3:7])))
    return 2.0 * math.acos(min(1.0, dot))


#: WGS84 equatorial radius (m); the local tangent-plane approximation below is good to ~0.1% within 10 km.
EARTH_RADIUS = 6378137.0


def enu_from_geodetic(lat: float, lon: float, alt: float, origin: tuple[float, float, float]) -> tuple[float, float, float]:
    """East/north/up metres of (lat, lon [deg], alt [m]) relative to ``origin`` (local plane)."""
    lat0, lon0, alt0 = origin
    east = math.radians(lon - lon0) * EARTH_RADIUS * math.cos(math.radians(lat0))
    north = math.radians(lat - lat0) * EARTH_RADIUS
    return east, north, alt - alt0
