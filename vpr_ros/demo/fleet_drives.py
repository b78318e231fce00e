"""Three robots driving overlapping routes through the rendered corridor, each in its own odometry
frame with drift (ROS-free): the data of the fleet benchmark and of ``vpr_ros_demo --fleet``.

robot_a drives places 0..13 (one place a metre) from t = 0 s, robot_b places 6..19 from t = 4 s,
robot_c places 0..7 from t = 20 s (so robot_c and robot_b share only places 6 and 7). Each robot's
odometry starts in its own frame (``FRAMES``: where that frame lies in the world) and integrates
every true motion with a yaw error per metre and a scale error.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vpr_ros.geometry import compose, inverse, planar_pose
from vpr_ros.verification.features import CameraIntrinsics

Pose7 = tuple[float, float, float, float, float, float, float]

#: robot -> (first place, last place, start time s)
ROUTES = {"robot_a": (0, 13, 0.0), "robot_b": (6, 19, 4.0), "robot_c": (0, 7, 20.0)}
#: where each robot's odometry frame lies in the world (robot_a's is the world's)
FRAMES: dict[str, Pose7] = {"robot_a": (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0),
                            "robot_b": planar_pose(3.0, -2.0, 0.7),  # type: ignore[dict-item]
                            "robot_c": planar_pose(-5.0, 4.0, -2.1)}  # type: ignore[dict-item]


@dataclass
class RobotDrive:
    """One robot's keyframes: places, stamps (s), true base poses (world), odometry poses (its
    frame, drifting), RGB images, depth (m) and the camera model."""

    name: str
    places: list[int]
    times: list[float]
    world: list[Pose7]
    odometry: list[Pose7]
    images: list[np.ndarray]
    depths: list[np.ndarray]
    intrinsics: CameraIntrinsics


def drifted(world: list[Pose7], frame: Pose7, yaw_per_m: float, scale: float) -> list[Pose7]:
    """Odometry poses: the robot starts at ``frame``^-1 world[0] and integrates each true motion with
    a yaw error of ``yaw_per_m`` rad per metre travelled and a relative scale error ``scale``."""
    out = [compose(inverse(frame), world[0])]
    for a, b in zip(world, world[1:]):
        m = compose(inverse(a), b)
        dist = float(np.linalg.norm(m[:3]))
        m = (m[0] * (1 + scale), m[1] * (1 + scale), m[2] * (1 + scale), *m[3:])
        out.append(compose(compose(out[-1], m), planar_pose(0.0, 0.0, yaw_per_m * dist)))
    return out  # type: ignore[return-value]


def fleet_drives(yaw_drift_deg_per_m: float = 0.05, scale_drift: float = 0.002) -> dict[str, RobotDrive]:
    """The three robots' drives (rendered: about a second a robot on 2 cores)."""
    from vpr_ros.demo.scene3d import Scene, corridor_traversals

    scene = Scene.corridor(length=28.0, seed=3)
    first, second = corridor_traversals(20, scene=scene, seed=3)
    _, third = corridor_traversals(20, scene=scene, seed=8)
    out = {}
    for name, d in (("robot_a", first), ("robot_b", second), ("robot_c", third)):
        lo, hi, start = ROUTES[name]
        places = list(range(lo, hi + 1))
        world = [d.poses[p] for p in places]
        out[name] = RobotDrive(name, places, [start + k for k in range(len(places))], world,
                               drifted(world, FRAMES[name], np.radians(yaw_drift_deg_per_m), scale_drift),
                               [d.images[p] for p in places], [d.depths[p] for p in places], d.intrinsics)
    return out
