"""Small pose helpers. A pose is (x, y, z, qx, qy, qz, qw); units metres and radians."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

Pose = tuple[float, float, float, float, float, float, float]

#: |q| may differ from 1 by this much (rounding in the publisher) before a pose is refused
QUATERNION_TOLERANCE = 1e-3


def pose_problem(t: float, pose: Sequence[float]) -> str | None:
    """Why a stamped pose (t s, (x, y, z, qx, qy, qz, qw)) cannot be used, or None: every value
    finite and the quaternion of unit norm within :data:`QUATERNION_TOLERANCE` (a NaN, a
    (0, 0, 0, 0) or a |q| = 5 orientation would poison every interpolation across it)."""
    if len(pose) != 7:
        return f"{len(pose)} values, not 7 (x y z qx qy qz qw)"
    if not math.isfinite(t) or not all(math.isfinite(v) for v in pose):
        return f"non-finite values (stamp {t!r}, pose {list(pose)})"
    norm = math.sqrt(sum(v * v for v in pose[3:]))
    if abs(norm - 1.0) > QUATERNION_TOLERANCE:
        return f"orientation quaternion of norm {norm:.4f}, not a unit quaternion"
    return None


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


#: WGS84 equatorial radius (m) and first eccentricity squared
EARTH_RADIUS = 6378137.0
WGS84_E2 = 6.69437999014e-3


def enu_from_geodetic(lat: float, lon: float, alt: float, origin: tuple[float, float, float]) -> tuple[float, float, float]:
    """East/north/up metres of (lat, lon [deg], alt [m]) relative to ``origin``: a local plane
    scaled by the WGS84 radii of curvature at the origin (meridian M, prime vertical N), good to a
    few centimetres within 10 km (a sphere of the equatorial radius was 0.1-0.7% off in north)."""
    lat0, lon0, alt0 = origin
    s = math.sin(math.radians(lat0))
    w = math.sqrt(1.0 - WGS84_E2 * s * s)
    n_radius = EARTH_RADIUS / w
    m_radius = EARTH_RADIUS * (1.0 - WGS84_E2) / (w * w * w)
    east = math.radians(lon - lon0) * (n_radius + alt0) * math.cos(math.radians(lat0))
    north = math.radians(lat - lat0) * (m_radius + alt0)
    return east, north, alt - alt0


def quat_to_matrix(q: np.ndarray | tuple) -> np.ndarray:
    """Unit quaternion (x, y, z, w) -> 3x3 rotation matrix."""
    x, y, z, w = (float(v) for v in q)
    n = math.sqrt(x * x + y * y + z * z + w * w)
    x, y, z, w = x / n, y / n, z / n, w / n
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def matrix_to_quat(R: np.ndarray) -> tuple[float, float, float, float]:
    """3x3 rotation matrix -> unit quaternion (x, y, z, w), w >= 0."""
    m = np.asarray(R, np.float64)
    t = np.trace(m)
    if t > 0:
        s = math.sqrt(t + 1.0) * 2
        w, x, y, z = 0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2]) * 2
        w, x, y, z = (m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s
    elif m[1, 1] > m[2, 2]:
        s = math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2]) * 2
        w, x, y, z = (m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s
    else:
        s = math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1]) * 2
        w, x, y, z = (m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s
    q = np.array([x, y, z, w])
    q /= np.linalg.norm(q)
    return tuple(float(v) for v in (q if q[3] >= 0 else -q))  # type: ignore[return-value]


def pose_matrix(p: Sequence[float]) -> np.ndarray:
    """(x, y, z, qx, qy, qz, qw) -> 4x4 homogeneous transform."""
    T = np.eye(4)
    T[:3, :3] = quat_to_matrix(p[3:7])
    T[:3, 3] = p[:3]
    return T


def matrix_pose(T: np.ndarray) -> Pose:
    """4x4 homogeneous transform -> (x, y, z, qx, qy, qz, qw)."""
    return (float(T[0, 3]), float(T[1, 3]), float(T[2, 3]), *matrix_to_quat(T[:3, :3]))  # type: ignore[return-value]


def compose(a: Sequence[float], b: Sequence[float]) -> Pose:
    """a * b: pose ``b`` (expressed in frame ``a``) expressed in a's parent frame."""
    return matrix_pose(pose_matrix(a) @ pose_matrix(b))


def inverse(p: Sequence[float]) -> Pose:
    """The inverse transform of pose ``p``."""
    return matrix_pose(np.linalg.inv(pose_matrix(p)))


def adjoint(p: Sequence[float]) -> np.ndarray:
    """6x6 adjoint of pose ``p`` for (x, y, z, rx, ry, rz) perturbations: maps a covariance
    expressed in frame b to frame a when ``p`` is b's pose in a (cov_a = Ad cov_b Ad^T)."""
    R = quat_to_matrix(p[3:7])
    t = np.asarray(p[:3], float)
    tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    Ad = np.zeros((6, 6))
    Ad[:3, :3], Ad[:3, 3:], Ad[3:, 3:] = R, tx @ R, R
    return Ad
