"""Two-view geometry for verification: robust models and relative poses with covariances.

Convention: a relative pose (R, t) maps keyframe-camera coordinates to query-camera
coordinates, ``p_q = R p_k + t`` (what OpenCV's recoverPose / solvePnP return);
:func:`query_in_keyframe` turns it into the query camera's pose in the keyframe camera frame.
Covariances are 6x6 over (x, y, z, rx, ry, rz) (metres, radians; rotation as a small rotation
vector), derived from the inliers' residuals, not constants.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vpr_ros.verification.features import CameraIntrinsics

#: translation variance (m^2) reported when only the direction is known (essential matrix)
UNKNOWN_SCALE_VAR = 1e4


@dataclass(frozen=True)
class TwoView:
    """A verified model: inlier mask [M], and for pose methods R (3x3), t (3), covariance (6x6)."""

    method: str                  # 'pnp' (metric), 'essential' (rotation + direction), 'fundamental'
    inliers: np.ndarray
    R: np.ndarray | None = None
    t: np.ndarray | None = None
    covariance: np.ndarray | None = None
    rms_px: float = float("nan")

    @property
    def n_inliers(self) -> int:
        return int(self.inliers.sum())


def _normalised(kp: np.ndarray, intr: CameraIntrinsics) -> np.ndarray:
    return np.stack([(kp[:, 0] - intr.cx) / intr.fx, (kp[:, 1] - intr.cy) / intr.fy], axis=1)


def fundamental(kp_a: np.ndarray, kp_b: np.ndarray, threshold_px: float = 2.0) -> TwoView:
    """Fundamental matrix by USAC MAGSAC (no intrinsics): only the inliers."""
    import cv2

    if len(kp_a) < 8:
        return TwoView("fundamental", np.zeros(len(kp_a), bool))
    try:
        F, mask = cv2.findFundamentalMat(kp_a.astype(np.float64), kp_b.astype(np.float64), cv2.USAC_MAGSAC,
                                         threshold_px, 0.999, 2000)
    except cv2.error:  # degenerate input (e.g. repeated points): no model
        F, mask = None, None
    if F is None or mask is None:
        return TwoView("fundamental", np.zeros(len(kp_a), bool))
    return TwoView("fundamental", mask.ravel().astype(bool))


def homography(kp_a: np.ndarray, kp_b: np.ndarray, threshold_px: float = 2.0) -> TwoView:
    """Homography by USAC MAGSAC: the model of views without parallax (no baseline, pure rotation,
    a planar scene), where the fundamental matrix is degenerate. Only the inliers."""
    import cv2

    if len(kp_a) < 4:
        return TwoView("homography", np.zeros(len(kp_a), bool))
    try:
        H, mask = cv2.findHomography(kp_a.astype(np.float64), kp_b.astype(np.float64), cv2.USAC_MAGSAC,
                                     threshold_px, maxIters=2000, confidence=0.999)
    except cv2.error:
        H, mask = None, None
    if H is None or mask is None:
        return TwoView("homography", np.zeros(len(kp_a), bool))
    return TwoView("homography", mask.ravel().astype(bool))


def essential(kp_k: np.ndarray, kp_q: np.ndarray, intr_k: CameraIntrinsics, intr_q: CameraIntrinsics,
              threshold_px: float = 2.0) -> TwoView:
    """Essential matrix by USAC (accurate: local optimisation and a least-squares polish) on
    normalised coordinates; rotation and translation
    direction (unit) from the cheirality check. The rotation covariance comes from the inliers'
    Sampson residuals and count; the translation's scale is unknown (:data:`UNKNOWN_SCALE_VAR`)."""
    import cv2

    if len(kp_k) < 8:
        return TwoView("essential", np.zeros(len(kp_k), bool))
    a, b = _normalised(kp_k, intr_k), _normalised(kp_q, intr_q)
    f = 0.5 * (intr_q.fx + intr_q.fy)
    try:
        E, mask = cv2.findEssentialMat(a, b, np.eye(3), cv2.USAC_ACCURATE, 0.999, threshold_px / f)
        if E is None or mask is None or E.shape != (3, 3):
            return TwoView("essential", np.zeros(len(kp_k), bool))
        inl = mask.ravel().astype(bool)
        _, R, t, pose_mask = cv2.recoverPose(E, a[inl], b[inl], np.eye(3))
    except cv2.error:  # degenerate input: no model
        return TwoView("essential", np.zeros(len(kp_k), bool))
    t = t.ravel() / max(np.linalg.norm(t), 1e-12)
    keep = np.zeros(len(kp_k), bool)
    keep[np.flatnonzero(inl)[pose_mask.ravel() > 0]] = True  # in front of both cameras
    # Sampson error of the inliers (normalised units -> pixels)
    x1 = np.c_[a[keep], np.ones(keep.sum())]
    x2 = np.c_[b[keep], np.ones(keep.sum())]
    Ex1, Etx2 = x1 @ E.T, x2 @ E
    num = np.sum(x2 * Ex1, axis=1) ** 2
    den = Ex1[:, 0] ** 2 + Ex1[:, 1] ** 2 + Etx2[:, 0] ** 2 + Etx2[:, 1] ** 2
    rms = float(np.sqrt(np.mean(num / np.maximum(den, 1e-18)))) * f if keep.any() else float("nan")
    n = max(int(keep.sum()), 1)
    sigma_rot = max(rms, 0.3) / f / math.sqrt(n) * 2.0  # rad; ~ pixel noise over focal length and count
    cov = np.diag([UNKNOWN_SCALE_VAR] * 3 + [sigma_rot ** 2] * 3)
    return TwoView("essential", keep, R, t, cov, rms)


def pnp(points3d_k: np.ndarray, kp_q: np.ndarray, intr_q: CameraIntrinsics, threshold_px: float = 3.0) -> TwoView:
    """Metric pose from the keyframe's 3-D points and the query's keypoints (PnP with USAC MAGSAC,
    refined by Levenberg-Marquardt on the inliers); covariance from the reprojection Jacobian."""
    import cv2

    ok = np.isfinite(points3d_k).all(axis=1) & (points3d_k[:, 2] > 0) if len(points3d_k) else np.zeros(0, bool)
    if ok.sum() < 6:
        return TwoView("pnp", np.zeros(len(points3d_k), bool))
    obj, img = points3d_k[ok].astype(np.float64), kp_q[ok].astype(np.float64)
    params = cv2.UsacParams()
    params.confidence, params.maxIterations, params.threshold = 0.999, 10000, threshold_px
    params.sampler, params.score, params.loMethod = cv2.SAMPLING_UNIFORM, cv2.SCORE_METHOD_MAGSAC, cv2.LOCAL_OPTIM_SIGMA
    try:  # the UsacParams overload also returns the camera matrix
        found, _, rvec, tvec, inl = cv2.solvePnPRansac(obj, img, intr_q.K, None, params=params)
    except cv2.error:
        found, inl = False, None
    mask = np.zeros(len(points3d_k), bool)
    if not found or inl is None or len(inl) < 6:
        return TwoView("pnp", mask)
    idx = inl.ravel()
    try:
        rvec, tvec = cv2.solvePnPRefineLM(obj[idx], img[idx], intr_q.K, None, rvec, tvec)
        proj, jac = cv2.projectPoints(obj[idx], rvec, tvec, intr_q.K, None)
    except cv2.error:
        return TwoView("pnp", mask)
    resid = (proj.reshape(-1, 2) - img[idx]).ravel()
    dof = max(resid.size - 6, 1)
    sigma2 = float(resid @ resid) / dof
    J = jac[:, :6]  # d(pixels) / d(rvec, tvec)
    try:
        cov_rt = sigma2 * np.linalg.inv(J.T @ J)
    except np.linalg.LinAlgError:
        cov_rt = np.eye(6) * UNKNOWN_SCALE_VAR
    R, _ = cv2.Rodrigues(rvec)
    mask[np.flatnonzero(ok)[idx]] = True
    cov = _covariance_of_inverse(rvec.ravel(), tvec.ravel(), cov_rt)
    return TwoView("pnp", mask, R, tvec.ravel(), cov, math.sqrt(float(np.mean(resid ** 2)) * 2))


def _covariance_of_inverse(rvec: np.ndarray, tvec: np.ndarray, cov_rt: np.ndarray) -> np.ndarray:
    """Covariance of the query-in-keyframe pose (t_kq, r_kq) from that of (r_qk, t_qk) (ordering
    (x, y, z, rx, ry, rz) out; (rx, ry, rz, x, y, z) in)."""
    order = [3, 4, 5, 0, 1, 2]
    return inverse_covariance(np.r_[tvec, rvec], np.asarray(cov_rt, np.float64)[np.ix_(order, order)])


def inverse_covariance(p: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Covariance [6, 6] of the inverse of the pose ``p`` = (x, y, z, rx, ry, rz) (rotation vector)
    from that of ``p``, both in that order, by a numerical Jacobian of the inversion."""
    import cv2

    def inv(q: np.ndarray) -> np.ndarray:
        R, _ = cv2.Rodrigues(q[3:])
        r, _ = cv2.Rodrigues(R.T)
        return np.r_[-R.T @ q[:3], r.ravel()]

    p0 = np.asarray(p, np.float64)
    f0 = inv(p0)
    J = np.zeros((6, 6))
    for i in range(6):
        d = np.zeros(6)
        d[i] = 1e-6
        J[:, i] = (inv(p0 + d) - f0) / 1e-6
    return J @ np.asarray(cov, np.float64) @ J.T


def query_in_keyframe(R: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(R, t) with p_q = R p_k + t  ->  the query camera's pose in the keyframe camera frame."""
    return R.T, -R.T @ t


def rotation_angle_deg(R: np.ndarray) -> float:
    """Angle of a rotation matrix, degrees."""
    return math.degrees(math.acos(max(-1.0, min(1.0, (float(np.trace(R)) - 1.0) / 2.0))))
