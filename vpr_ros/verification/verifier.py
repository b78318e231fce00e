"""Re-ranking and geometric verification of place matches (ROS-free; used by the localizer, the
map builder and evaluation).

* :meth:`Verifier.rerank_score`: a cheap local score for re-ordering the global top-K (inliers of a
  robust fundamental matrix on ratio-test matches; no intrinsics needed).
* :meth:`Verifier.verify`: a decision with a relative pose. With the keyframe's 3-D points
  (depth at map time) and the query's intrinsics: PnP, metric 6-DoF. With both cameras'
  intrinsics: the essential matrix, rotation and translation direction. A match is verified only
  when the inlier count and ratio pass the thresholds; every refusal says why.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vpr_ros.config import VerificationConfig
from vpr_ros.geometry import matrix_to_quat
from vpr_ros.verification.features import LocalFeatures, extract_classical
from vpr_ros.verification.geometry import essential, fundamental, homography, pnp, query_in_keyframe
from vpr_ros.verification.matching import match

Pose7 = tuple[float, float, float, float, float, float, float]


@dataclass(frozen=True)
class Verification:
    """The outcome of verifying one query against one keyframe.

    ``pose``: the query camera's pose in the keyframe camera frame (x, y, z, qx, qy, qz, qw);
    metric when ``metric`` (PnP), a unit translation direction otherwise (essential matrix).
    ``covariance``: 6x6 over (x, y, z, rx, ry, rz) of that pose.
    """

    verified: bool
    method: str
    matches: int
    inliers: int
    reason: str = ""
    pose: Pose7 | None = None
    covariance: np.ndarray | None = None
    metric: bool = False
    rms_px: float = float("nan")

    @property
    def inlier_ratio(self) -> float:
        return self.inliers / self.matches if self.matches else 0.0


class Verifier:
    """Extracts, scores and verifies local features with the settings of ``cfg``."""

    def __init__(self, cfg: VerificationConfig) -> None:
        self.cfg = cfg

    @property
    def enabled(self) -> bool:
        return self.cfg.features != "none"

    def features(self, rgb: np.ndarray) -> LocalFeatures | None:
        """The local features of an RGB image (None when features are off)."""
        if not self.enabled:
            return None
        return extract_classical(rgb, self.cfg.features, self.cfg.max_features)

    def rerank_score(self, q: LocalFeatures, k: LocalFeatures) -> int:
        """Inliers of a robust fundamental matrix between the two images' matched features."""
        if q.kind != k.kind or len(q) == 0 or len(k) == 0:
            return 0
        pairs = match(q, k, self.cfg.ratio, mutual=False)  # the robust model removes what the ratio test lets by
        if len(pairs) < 8:
            return int(len(pairs) // 4)  # too few to fit a model: rank by what little matched
        a, b = q.keypoints[pairs[:, 0]], k.keypoints[pairs[:, 1]]
        inliers = fundamental(a, b, self.cfg.ransac_px).n_inliers
        if inliers < len(pairs) // 2:  # no parallax (same viewpoint, pure rotation): F is degenerate, H is not
            inliers = max(inliers, homography(a, b, self.cfg.ransac_px).n_inliers)
        return inliers

    def verify(self, q: LocalFeatures, k: LocalFeatures) -> Verification:
        """Verify query features ``q`` against keyframe features ``k`` (see module docstring)."""
        cfg = self.cfg
        if q.kind != k.kind:
            return Verification(False, "", 0, 0, f"query has '{q.kind}' features, the map '{k.kind}'")
        pairs = match(q, k, cfg.ratio)
        n = len(pairs)
        if n < cfg.min_inliers:
            return Verification(False, "", n, 0, f"too few feature matches ({n} < {cfg.min_inliers})")
        kq, kk = q.keypoints[pairs[:, 0]], k.keypoints[pairs[:, 1]]
        if q.intrinsics is None:
            return Verification(False, "", n, 0, "no camera intrinsics for the query (CameraInfo)")
        if k.points3d is not None:
            model = pnp(k.points3d[pairs[:, 1]], kq, q.intrinsics, cfg.pnp_px)
        elif k.intrinsics is not None:
            model = essential(kk, kq, k.intrinsics, q.intrinsics, cfg.ransac_px)
        else:
            return Verification(False, "", n, 0, "no camera intrinsics stored with the keyframe (map built "
                                                 "without CameraInfo)")
        inl = model.n_inliers
        result = dict(method=model.method, matches=n, inliers=inl, rms_px=model.rms_px)
        if inl < cfg.min_inliers or inl / n < cfg.min_inlier_ratio or model.R is None:
            return Verification(False, reason=f"{model.method}: {inl} inliers of {n} matches (need "
                                f"{cfg.min_inliers} and ratio {cfg.min_inlier_ratio:.2f})", **result)
        R, t = query_in_keyframe(model.R, model.t)
        pose = (*map(float, t), *matrix_to_quat(R))
        return Verification(True, pose=pose, covariance=model.covariance,  # type: ignore[arg-type]
                            metric=model.method == "pnp", **result)
