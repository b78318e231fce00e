"""Re-ranking and geometric verification of place matches (ROS-free; used by the localizer, the
map builder and evaluation).

* :meth:`Verifier.rerank_score`: a cheap local score for re-ordering the global top-K (classical:
  inliers of a robust fundamental matrix on ratio-test matches, no intrinsics needed; dense: mutual
  nearest neighbours of the network's patch features).
* :meth:`Verifier.verify`: a decision with a relative pose. With the keyframe's 3-D points
  (depth at map time) and the query's intrinsics: PnP, metric 6-DoF. With both cameras'
  intrinsics: the essential matrix, rotation and translation direction. Without a camera model
  (``without_camera_model: fundamental``, the default): a robust fundamental matrix on the pixel
  matches, or a homography where the views have no parallax, as RTAB-Map and DBoW2-based loop
  closers do without calibration; verified without a relative pose. A match is verified only when
  the inlier count and ratio pass the thresholds; every refusal says why.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from vpr_ros.config import VerificationConfig
from vpr_ros.errors import ConfigError
from vpr_ros.geometry import matrix_to_quat
from vpr_ros.verification.features import LocalFeatures, dense_features, extract_classical
from vpr_ros.verification.geometry import essential, fundamental, homography, pnp, query_in_keyframe
from vpr_ros.verification.matching import match, mutual_matches

if TYPE_CHECKING:
    from vpr_ros.runtime.base import DescriptorBackend

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

    @property
    def dense(self) -> bool:
        """Dense features come from the network's forward pass, not from the image alone."""
        return self.cfg.features == "dense"

    def check_backend(self, backend: "DescriptorBackend") -> None:
        """Dense features need a backend with the network's local output (ConfigError otherwise)."""
        if self.dense and not backend.has_local:
            raise ConfigError(f"verification.features 'dense' needs the network's local_features output, which "
                              f"backend '{backend.name}' ({backend.model_id}) does not give: use the onnxruntime "
                              "or torch backend (a graph exported by vpr_ros >= 0.3), or features 'sift' / 'orb'")

    def map_note(self, stored: str) -> str:
        """Why a map whose keyframes store ``stored`` local features cannot be verified ('' if it can)."""
        if not self.enabled or stored == self.cfg.features:
            return ""
        what = f"'{stored}' local features" if stored else "no local features"
        return (f"the map stores {what} but verification.features is '{self.cfg.features}': no re-ranking, "
                "and every loop closure is refused while verification.loop_closures is 'geometric' "
                "(rebuild the map or set verification.features to match)")

    def features(self, rgb: np.ndarray, local: np.ndarray | None = None) -> LocalFeatures | None:
        """The local features of an RGB image (None when features are off); dense features need
        the network's local output ``local`` [P, C] for this image."""
        if not self.enabled:
            return None
        if self.dense:
            if local is None:
                raise ValueError("dense features need the network's local output for the image")
            return dense_features(local, (rgb.shape[1], rgb.shape[0]))
        return extract_classical(rgb, self.cfg.features, self.cfg.max_features, self.cfg.max_side)

    def rerank_score(self, q: LocalFeatures, k: LocalFeatures) -> int:
        """Classical: inliers of a robust fundamental matrix (or homography) between the matched
        features. Dense: the number of mutual nearest neighbours (SelaVPR; no RANSAC)."""
        if q.kind != k.kind or len(q) == 0 or len(k) == 0:
            return 0
        if q.kind == "dense":
            return len(mutual_matches(q, k))
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
        pnp_px, ransac_px = cfg.pnp_px, cfg.ransac_px
        if q.kind == "dense":  # keypoints are patch centres: tolerate half a cell
            cell = 0.5 * max(q.image_size) / max(1.0, len(q) ** 0.5)
            pnp_px, ransac_px = max(pnp_px, cell), max(ransac_px, cell)
        missing = ("no camera intrinsics for the query (CameraInfo)" if q.intrinsics is None else
                   "no camera intrinsics stored with the keyframe (map built without CameraInfo)"
                   if k.points3d is None and k.intrinsics is None else "")
        if missing:
            if cfg.without_camera_model == "refuse":
                return Verification(False, "", n, 0, missing)
            return self._uncalibrated(kq, kk, n, ransac_px, missing)
        assert q.intrinsics is not None
        if k.points3d is not None:
            model = pnp(k.points3d[pairs[:, 1]], kq, q.intrinsics, pnp_px)
        else:
            assert k.intrinsics is not None
            model = essential(kk, kq, k.intrinsics, q.intrinsics, ransac_px)
        inl = model.n_inliers
        result = dict(method=model.method, matches=n, inliers=inl, rms_px=model.rms_px)
        if inl < cfg.min_inliers or inl / n < cfg.min_inlier_ratio or model.R is None:
            return Verification(False, reason=f"{model.method}: {inl} inliers of {n} matches (need "
                                f"{cfg.min_inliers} and ratio {cfg.min_inlier_ratio:.2f})", **result)
        R, t = query_in_keyframe(model.R, model.t)
        pose = (*map(float, t), *matrix_to_quat(R))
        return Verification(True, pose=pose, covariance=model.covariance,  # type: ignore[arg-type]
                            metric=model.method == "pnp", **result)

    def _uncalibrated(self, kq: np.ndarray, kk: np.ndarray, n: int, ransac_px: float, missing: str) -> Verification:
        """Pixel-only verification: fundamental matrix, or a homography when the views have no
        parallax (the fundamental matrix is then degenerate); no relative pose."""
        cfg = self.cfg
        model = fundamental(kq, kk, ransac_px)
        if model.n_inliers < n // 2:
            h = homography(kq, kk, ransac_px)
            if h.n_inliers > model.n_inliers:
                model = h
        inl = model.n_inliers
        result = dict(method=model.method, matches=n, inliers=inl, rms_px=model.rms_px)
        if inl < cfg.min_inliers or inl / n < cfg.min_inlier_ratio:
            return Verification(False, reason=f"{model.method} ({missing}): {inl} inliers of {n} matches (need "
                                f"{cfg.min_inliers} and ratio {cfg.min_inlier_ratio:.2f})", **result)
        return Verification(True, reason=f"verified without a camera model ({missing}): no relative pose",
                            **result)
