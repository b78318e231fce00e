"""A drive with revisits for loop closure while mapping: laps through the rendered corridor of
:mod:`vpr_ros.demo.scene3d` in one session (forward, back the other way, forward again, ...), with
ground-truth robot poses and odometry that drifts (a heading bias per metre plus noise), as a SLAM
back end would see it. Stamps advance by ``dt`` per frame (1 m per frame)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vpr_ros.demo.scene3d import DEMO_CAMERA, Scene, look_pose
from vpr_ros.geometry import compose, inverse, planar_pose
from vpr_ros.verification.features import CameraIntrinsics

Pose7 = tuple[float, float, float, float, float, float, float]
OPTICAL = (0.0, 0.0, 0.0, -0.5, 0.5, -0.5, 0.5)  # the camera's optical frame in the robot frame


@dataclass
class SlamDrive:
    """Frames of one session: RGB, depth (m), stamps (s), true and odometry robot poses, lap numbers."""

    images: list[np.ndarray]
    depths: list[np.ndarray]
    stamps: list[float]
    truth: list[Pose7]
    odometry: list[Pose7]
    increments: list[Pose7]   # odometry step i -> i+1 (what a SLAM back end's odometry factors hold)
    laps: list[int]
    intrinsics: CameraIntrinsics


def drifting_odometry(truth: list[Pose7], drift_deg: float, rng: np.random.Generator) -> tuple[list[Pose7], list[Pose7]]:
    """(odometry poses, increments) integrating the true increments with noise and a heading bias of
    ``drift_deg`` per metre (at least 0.3 m's worth per step: turning on the spot drifts too)."""
    odo, increments = [truth[0]], []
    for i in range(1, len(truth)):
        inc = compose(inverse(truth[i - 1]), truth[i])
        dist = float(np.linalg.norm(inc[:2]))
        yaw = math.radians(drift_deg) * max(dist, 0.3) + rng.normal(0, 0.002)
        noisy = compose(inc, planar_pose(rng.normal(0, 0.01 * dist), rng.normal(0, 0.01 * dist), yaw))
        increments.append(noisy)
        odo.append(compose(odo[-1], noisy))
    return odo, increments


def slam_drive(places: int = 20, laps: int = 3, drift_deg: float = 0.6, seed: int = 3, dt: float = 1.0,
               scene: Scene | None = None, cam: CameraIntrinsics = DEMO_CAMERA) -> SlamDrive:
    """``laps`` laps of ``places`` frames 1 m apart: even laps forward (+x, the later ones offset
    sideways with small heading and pitch jitter), odd laps back (-x, a little to the left)."""
    scene = scene or Scene.corridor(length=places + 8.0, seed=seed)
    rng = np.random.default_rng(seed + 7)
    images, depths, truth = [], [], []
    stamps: list[float] = []
    lap_of: list[int] = []
    for lap in range(laps):
        for i in range(places):
            if lap % 2 == 0:
                x = 1.0 + i
                y = 0.0 if lap == 0 else float(rng.uniform(-0.3, 0.3))
                yaw = 0.0 if lap == 0 else float(np.radians(rng.uniform(-4, 4)))
                pitch = 0.0 if lap == 0 else float(np.radians(rng.uniform(-2, 2)))
            else:
                x, y, yaw, pitch = float(places - i), 0.4, math.pi, 0.0
            cam_pose = look_pose((x, y, 1.4), yaw, pitch)
            rgb, depth = scene.render(cam_pose, cam)
            images.append(rgb)
            depths.append(depth)
            truth.append(compose(cam_pose, inverse(OPTICAL)))
            stamps.append(dt * len(stamps))
            lap_of.append(lap)
    odo, increments = drifting_odometry(truth, drift_deg, rng)
    return SlamDrive(images, depths, stamps, truth, odo, increments, lap_of, cam)
