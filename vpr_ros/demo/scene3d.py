"""A textured multi-plane 3-D world rendered by a pinhole camera at known poses (ROS-free).

Ground truth for geometric verification: every image comes with its exact camera pose and
depth. The world is a corridor-like box (floor, ceiling, two side walls, an end wall) plus a few
free-standing panels, each plane with its own random texture (blobs, stripes and noise at several
scales, so that corner and blob detectors find plenty of stable features).

Frames: the camera frame is the optical one (x right, y down, z forward); a pose is
(x, y, z, qx, qy, qz, qw) of the camera in the world, metres.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vpr_ros.geometry import matrix_to_quat, quat_to_matrix
from vpr_ros.verification.features import CameraIntrinsics

Pose7 = tuple[float, float, float, float, float, float, float]


@dataclass(frozen=True)
class Plane:
    """A textured rectangle: origin, two in-plane unit axes (u, v) and their extents (m)."""

    origin: np.ndarray
    u: np.ndarray
    v: np.ndarray
    size: tuple[float, float]
    texture: np.ndarray  # [Ht, Wt, 3] uint8, spanning the whole rectangle


def look_pose(position: tuple[float, float, float], yaw: float, pitch: float = 0.0) -> Pose7:
    """Camera pose at ``position`` (world: x forward along the corridor, y left, z up) looking
    along heading ``yaw`` (rad, about world z) and ``pitch`` (rad, positive up)."""
    forward = np.array([math.cos(yaw) * math.cos(pitch), math.sin(yaw) * math.cos(pitch), math.sin(pitch)])
    left = np.array([-math.sin(yaw), math.cos(yaw), 0.0])
    up = np.cross(forward, left)
    R = np.stack([-left, -up, forward], axis=1)  # columns: camera x (right), y (down), z (forward)
    return (*map(float, position), *matrix_to_quat(R))  # type: ignore[return-value]


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    import cv2

    img = np.zeros((h, w, 3), np.float32)
    for scale in (4, 16, 64):  # noise at several scales
        small = rng.uniform(0, 1, (max(2, h // scale), max(2, w // scale), 3)).astype(np.float32)
        img += cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC) * (0.5 if scale == 4 else 1.0)
    img = img / img.max() * 150
    for _ in range(int(h * w / 900)):  # blobs and bars: crisp corners
        c = rng.integers(0, 255, 3).tolist()
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        if rng.random() < 0.5:
            cv2.circle(img, (x, y), int(rng.integers(3, 14)), c, -1)
        else:
            cv2.rectangle(img, (x, y), (x + int(rng.integers(4, 30)), y + int(rng.integers(4, 30))), c, -1)
    return np.clip(img, 0, 255).astype(np.uint8)


class Scene:
    """A world of textured planes; :meth:`render` gives RGB and depth for a camera pose."""

    def __init__(self, planes: list[Plane]) -> None:
        self.planes = planes

    @classmethod
    def corridor(cls, length: float = 30.0, width: float = 4.0, height: float = 3.0, seed: int = 0,
                 px_per_m: int = 80) -> "Scene":
        """A corridor along +x from x=0 to ``length``: floor, ceiling, side walls, end wall, panels."""
        rng = np.random.default_rng(seed)
        e = np.eye(3)

        def plane(origin: tuple, u: np.ndarray, v: np.ndarray, size: tuple[float, float]) -> Plane:
            tex = _texture(rng, int(size[1] * px_per_m), int(size[0] * px_per_m))
            return Plane(np.array(origin, float), u, v, size, tex)

        hw = width / 2
        planes = [
            plane((0, hw, 0), e[0], e[2], (length, height)),                 # left wall (y = +hw)
            plane((0, -hw, 0), e[0], e[2], (length, height)),                # right wall
            plane((0, -hw, 0), e[0], e[1], (length, width)),                 # floor (z = 0)
            plane((0, -hw, height), e[0], e[1], (length, width)),            # ceiling
            plane((length, -hw, 0), e[1], e[2], (width, height)),            # end wall
            plane((-0.01, -hw, 0), e[1], e[2], (width, height)),             # start wall
        ]
        for k in range(int(length // 6)):  # free-standing panels across part of the corridor
            x = 4.0 + 6.0 * k + float(rng.uniform(-1, 1))
            y0 = float(rng.choice([-hw, 0.4]))
            planes.append(plane((x, y0, 0.3), e[1], e[2], (hw - 0.4 if y0 > 0 else hw - 0.6, 1.8)))
        return cls(planes)

    def render(self, pose: Pose7, cam: CameraIntrinsics) -> tuple[np.ndarray, np.ndarray]:
        """(RGB uint8 [H, W, 3], depth float32 [H, W] in metres along the optical axis; NaN = nothing)."""
        R = quat_to_matrix(pose[3:])
        t = np.array(pose[:3], float)
        u, v = np.meshgrid(np.arange(cam.width) + 0.5, np.arange(cam.height) + 0.5)
        rays_cam = np.stack([(u - cam.cx) / cam.fx, (v - cam.cy) / cam.fy, np.ones_like(u)], axis=-1)
        rays = rays_cam @ R.T  # world directions (unnormalised: z_cam component = 1)
        best = np.full(u.shape, np.inf)
        rgb = np.zeros((*u.shape, 3), np.uint8)
        for p in self.planes:
            n = np.cross(p.u, p.v)
            denom = rays @ n
            with np.errstate(divide="ignore", invalid="ignore"):
                s = ((p.origin - t) @ n) / denom  # ray parameter = depth along the optical axis
            hit = t + rays * s[..., None]
            a = (hit - p.origin) @ p.u
            b = (hit - p.origin) @ p.v
            ok = (s > 0.05) & (s < best) & (a >= 0) & (a <= p.size[0]) & (b >= 0) & (b <= p.size[1])
            if not ok.any():
                continue
            th, tw = p.texture.shape[:2]
            ti = np.clip((b[ok] / p.size[1] * (th - 1)).astype(int), 0, th - 1)
            tj = np.clip((a[ok] / p.size[0] * (tw - 1)).astype(int), 0, tw - 1)
            rgb[ok] = p.texture[ti, tj]
            best[ok] = s[ok]
        depth = np.where(np.isfinite(best), best, np.nan).astype(np.float32)
        return rgb, depth


def relative_pose(a: Pose7, b: Pose7) -> tuple[np.ndarray, np.ndarray]:
    """(R, t) of pose ``b`` expressed in the frame of pose ``a`` (T_a^-1 T_b)."""
    Ra, Rb = quat_to_matrix(a[3:]), quat_to_matrix(b[3:])
    return Ra.T @ Rb, Ra.T @ (np.array(b[:3]) - np.array(a[:3]))


@dataclass
class SceneTraversal:
    """Frames of a drive through a :class:`Scene`: RGB, depth (m), camera and robot poses, stamps."""

    images: list[np.ndarray]
    depths: list[np.ndarray]
    camera_poses: list[Pose7]
    poses: list[Pose7]          # robot (base_link) poses: the camera's, with base axes (x forward, z up)
    stamps: list[float]
    intrinsics: CameraIntrinsics


#: the camera model of the demo traversals (a 320x240 pinhole, ~63 deg horizontal field of view)
DEMO_CAMERA = CameraIntrinsics(260.0, 260.0, 160.0, 120.0, 320, 240)


def corridor_traversals(n: int = 24, spacing: float = 1.0, seed: int = 3, revisit_start: float = 1000.0,
                        scene: Scene | None = None, cam: CameraIntrinsics = DEMO_CAMERA,
                        relight: bool = False) -> tuple[SceneTraversal, SceneTraversal]:
    """Two drives along the corridor: the first at the centre line looking ahead; the second
    later, offset sideways (up to 0.4 m), with heading and pitch jitter (a few degrees), and with
    ``relight`` under other lighting (gain, gamma, colour cast) with sensor noise."""
    from vpr_ros.geometry import compose, inverse

    scene = scene or Scene.corridor(length=n * spacing + 8.0, seed=seed)
    rng = np.random.default_rng(seed + 1)
    optical = (0.0, 0.0, 0.0, -0.5, 0.5, -0.5, 0.5)
    out = []
    for run in range(2):
        imgs, depths, cams, bases, stamps = [], [], [], [], []
        for i in range(n):
            x = 1.0 + i * spacing
            if run == 0:
                p = look_pose((x, 0.0, 1.4), 0.0)
            else:
                p = look_pose((x + float(rng.uniform(-0.3, 0.3)), float(rng.uniform(-0.4, 0.4)), 1.4 + float(rng.uniform(-0.05, 0.05))),
                              float(np.radians(rng.uniform(-6, 6))), float(np.radians(rng.uniform(-3, 3))))
            rgb, d = scene.render(p, cam)
            if run == 1 and relight:
                gain, gamma = float(rng.uniform(0.55, 0.8)), float(rng.uniform(1.2, 1.6))
                x = (rgb.astype(np.float32) / 255.0) ** gamma * gain * rng.uniform(0.85, 1.15, 3)
                rgb = np.clip(x * 255.0 + rng.normal(0, 6.0, rgb.shape), 0, 255).astype(np.uint8)
            imgs.append(rgb)
            depths.append(d)
            cams.append(p)
            bases.append(compose(p, inverse(optical)))
            stamps.append((revisit_start if run else 0.0) + 0.5 * i)
        out.append(SceneTraversal(imgs, depths, cams, bases, stamps, cam))
    return out[0], out[1]
