"""Inter-robot loop closures: a candidate verified geometrically with the other robot's features.

The closure relates the two keyframes' robot base frames: ``pose`` is the other robot's base at
its keyframe, in this robot's base frame at its keyframe (metres, quaternion), from the verified
camera-to-camera pose and each robot's camera pose in its base (the other's comes with its
features), so it holds whatever odometry frames the robots use. It is metric only when one side has 3-D points (depth at map time) and the other
its camera model (PnP); a candidate verified without that is refused, because a multi-robot back
end needs a metric edge.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from vpr_ros.fleet.codec import Robot
from vpr_ros.geometry import adjoint, compose, inverse, quat_to_matrix
from vpr_ros.verification.features import LocalFeatures
from vpr_ros.verification.verifier import Verification, Verifier

Pose7 = tuple[float, float, float, float, float, float, float]


@dataclass(frozen=True)
class InterRobotClosure:
    """``robot``'s keyframe ``keyframe`` seen again by ``other``'s ``other_keyframe``."""

    robot: Robot
    keyframe: int
    stamp: float
    other: Robot
    other_keyframe: int
    other_stamp: float
    pose: Pose7               # the other keyframe's base in this keyframe's base frame
    covariance: np.ndarray    # [6, 6] over (x, y, z, rx, ry, rz) of ``pose``
    camera_pose: Pose7        # the same between the two cameras (optical frames)
    keyframe_pose: Pose7      # this keyframe's base pose in this robot's map frame
    other_keyframe_pose: Pose7  # the other keyframe's base pose in the other robot's map frame
    inliers: int
    score: float              # the fleet code cosine that proposed it


def verify_pair(verifier: Verifier, own: LocalFeatures, theirs: LocalFeatures) -> tuple[Verification, bool]:
    """Verify their keyframe against ours: ours as the map side when it has 3-D points, else theirs
    (the pose then inverted). Returns (verification with the pose of *their* camera in *our*
    camera frame, whether the roles were swapped)."""
    if own.points3d is not None and theirs.intrinsics is not None:
        return verifier.verify(theirs, own), False
    if theirs.points3d is not None and own.intrinsics is not None:
        v = verifier.verify(own, theirs)  # our camera in theirs
        if v.verified and v.pose is not None and v.covariance is not None:
            return replace(v, pose=inverse(v.pose), covariance=inverse_covariance(v.pose, v.covariance)), True
        return v, True
    return Verification(False, "", 0, 0, "no metric pose possible: neither keyframe has 3-D points with the "
                        "other's camera model"), False


def closure_of(verifier: Verifier, robot: Robot, keyframe: int, stamp: float, own: LocalFeatures, other: Robot,
               other_keyframe: int, other_stamp: float, theirs: LocalFeatures, score: float,
               own_camera: Pose7, their_camera: Pose7, own_pose: Pose7 = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0),
               their_pose: Pose7 = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0)) -> tuple[InterRobotClosure | None, str]:
    """(the closure, '') when the pair verifies with a metric pose, else (None, the reason).
    ``own_camera`` / ``their_camera``: each robot's camera pose in its base frame; ``own_pose`` /
    ``their_pose``: the keyframes' base poses in their robots' map frames."""
    v, _ = verify_pair(verifier, own, theirs)
    if not v.verified:
        return None, v.reason
    if not v.metric or v.pose is None or v.covariance is None:
        return None, f"{v.method}: verified without a metric pose"
    base = compose(compose(tuple(own_camera), v.pose), inverse(tuple(their_camera)))
    Ad = adjoint(tuple(own_camera))  # the covariance expressed in this robot's base frame, as the localizer does
    return InterRobotClosure(robot, keyframe, stamp, other, other_keyframe, other_stamp, base,  # type: ignore[arg-type]
                             Ad @ np.asarray(v.covariance, np.float64) @ Ad.T, v.pose, tuple(own_pose),  # type: ignore[arg-type]
                             tuple(their_pose), v.inliers, score), ""


def inverse_covariance(pose: Pose7, cov: np.ndarray) -> np.ndarray:
    """Covariance [6, 6] of the inverse of ``pose`` given that of ``pose``, both over (x, y, z,
    rx, ry, rz) (rotation vector)."""
    import cv2

    from vpr_ros.verification.geometry import inverse_covariance as of_inverse

    r0, _ = cv2.Rodrigues(quat_to_matrix(pose[3:]))
    return of_inverse(np.r_[np.asarray(pose[:3], np.float64), r0.ravel()], cov)
