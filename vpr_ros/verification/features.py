"""Local features of an image: keypoints, descriptors, optional 3-D points and intrinsics.

Two kinds behind one type:

* **classical** (:func:`extract_classical`): OpenCV SIFT (128 values, stored as uint8: OpenCV's
  SIFT values are integers 0-255, so nothing is lost) or ORB (binary, 32 bytes), detected on the
  grey image; works without trained weights.
* **dense** (:func:`dense_features`): the network's own patch tokens (a second output of the same
  forward pass), one per patch at the patch centre, L2-normalised (SelaVPR-style matching).

Keypoints are pixel coordinates (x, y) of the original image. ``points3d`` are the keypoints'
positions in the camera (optical) frame, metres, NaN where the depth was invalid.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from vpr_ros.errors import ImageError, VprError

KINDS = ("orb", "sift", "dense")


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics in pixels (from sensor_msgs/CameraInfo ``k``) and the image size."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    @property
    def K(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def as_array(self) -> np.ndarray:
        return np.array([self.fx, self.fy, self.cx, self.cy, self.width, self.height], np.float64)

    @classmethod
    def from_array(cls, a: np.ndarray) -> "CameraIntrinsics":
        fx, fy, cx, cy, w, h = (float(v) for v in a)
        return cls(fx, fy, cx, cy, int(w), int(h))

    @classmethod
    def from_k(cls, k: "list[float] | np.ndarray", width: int, height: int) -> "CameraIntrinsics":
        """From a row-major 3x3 camera matrix (CameraInfo.k); refuses an unset or broken one."""
        k = np.asarray(k, np.float64).reshape(-1)
        if k.size != 9 or not np.isfinite(k).all() or k[0] <= 0 or k[4] <= 0 or width <= 0 or height <= 0:
            raise VprError(f"camera intrinsics unusable: k={k.tolist()}, {width}x{height} (is the camera calibrated?)")
        return cls(float(k[0]), float(k[4]), float(k[2]), float(k[5]), int(width), int(height))


@dataclass
class LocalFeatures:
    """Keypoints [N, 2] (x, y px), descriptors [N, D] (uint8 binary or float32), kind, image size."""

    kind: str
    keypoints: np.ndarray
    descriptors: np.ndarray
    image_size: tuple[int, int]  # (width, height)
    points3d: np.ndarray | None = None        # [N, 3] metres in the camera frame, NaN = no depth
    intrinsics: CameraIntrinsics | None = field(default=None)

    def __len__(self) -> int:
        return int(self.keypoints.shape[0])

    @property
    def nbytes(self) -> int:
        """Storage size (keypoints, descriptors, 3-D points)."""
        return int(self.keypoints.nbytes + self.descriptors.nbytes + (self.points3d.nbytes if self.points3d is not None else 0))

    def with_depth(self, depth_m: np.ndarray, intr: CameraIntrinsics) -> "LocalFeatures":
        """Attach 3-D points from an aligned depth image [H, W] (metres, NaN invalid)."""
        h, w = depth_m.shape[:2]
        if (w, h) != self.image_size:
            raise ImageError(f"depth image is {w}x{h} but the camera image is "
                             f"{self.image_size[0]}x{self.image_size[1]}: it must be aligned to it")
        xs = np.clip(np.round(self.keypoints[:, 0] - 0.5).astype(int), 0, w - 1)
        ys = np.clip(np.round(self.keypoints[:, 1] - 0.5).astype(int), 0, h - 1)
        z = depth_m[ys, xs].astype(np.float64)
        pts = np.stack([(self.keypoints[:, 0] - intr.cx) / intr.fx * z, (self.keypoints[:, 1] - intr.cy) / intr.fy * z, z],
                       axis=1)
        return replace(self, points3d=pts.astype(np.float32), intrinsics=intr)


def extract_classical(rgb: np.ndarray, kind: str = "orb", max_features: int = 1000,
                      max_side: int = 1600) -> LocalFeatures:
    """ORB or SIFT keypoints and descriptors of an RGB uint8 image [H, W, 3]. Detected on the
    image shrunk (area interpolation) so that its long side is at most ``max_side`` px: time and
    memory per frame are bounded whatever the camera sends (SIFT on a 7900 x 8000 frame took
    15 GB); keypoints are returned in the original image's pixel coordinates (intrinsics apply)."""
    import cv2

    if kind not in ("orb", "sift"):
        raise VprError(f"classical features: '{kind}' is not 'orb' or 'sift'")
    grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    h, w = grey.shape
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        grey = cv2.resize(grey, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    if kind == "orb":
        det = cv2.ORB_create(nfeatures=max_features, fastThreshold=10)
    else:
        det = cv2.SIFT_create(nfeatures=max_features)
    kps, desc = det.detectAndCompute(grey, None)
    if desc is None or not kps:
        dim = 32 if kind == "orb" else 128
        return LocalFeatures(kind, np.zeros((0, 2), np.float32), np.zeros((0, dim), np.uint8), (w, h))
    pts = np.array([k.pt for k in kps], np.float32)
    if scale < 1.0:  # back to original pixels (pixel centres: (u + 0.5) / s - 0.5)
        sx, sy = w / grey.shape[1], h / grey.shape[0]
        pts = (pts + 0.5) * np.array([sx, sy], np.float32) - 0.5
    if kind == "sift":  # integer-valued in [0, 255]: a quarter of the storage, bit-exact
        desc = np.clip(np.rint(desc), 0, 255).astype(np.uint8)
    return LocalFeatures(kind, pts, np.ascontiguousarray(desc), (w, h))


def dense_features(tokens: np.ndarray, image_size: tuple[int, int]) -> LocalFeatures:
    """Patch tokens [G*G, C] of one image (row-major grid) -> features at the patch centres of the
    original ``image_size`` (width, height), descriptors L2-normalised float16."""
    p, c = tokens.shape
    g = int(round(p ** 0.5))
    if g * g != p:
        raise VprError(f"dense features: {p} tokens are not a square grid")
    w, h = image_size
    ys, xs = np.meshgrid((np.arange(g) + 0.5) * h / g, (np.arange(g) + 0.5) * w / g, indexing="ij")
    t = np.asarray(tokens, np.float32)
    t = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
    return LocalFeatures("dense", np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32),
                         t.astype(np.float16), (w, h))
