"""Inter-robot verification (issue 35): a candidate's local features travel in a features packet
and are verified against the robot's own keyframe; the closure's metric pose matches the rendered
ground truth whichever side has depth; other places are refused. Rendered corridor drives (two
robots, the second offset and turned), real SIFT, real PnP."""
from __future__ import annotations

import numpy as np
import pytest

from vpr_ros.config import VerificationConfig
from vpr_ros.demo.scene3d import corridor_traversals, relative_pose
from vpr_ros.errors import FleetError, ForeignModel
from vpr_ros.fleet.closures import closure_of, inverse_covariance
from vpr_ros.fleet.codec import FleetCodec, Robot
from vpr_ros.fleet.features_wire import decode_features, decode_request, encode_features, encode_request
from vpr_ros.config import OPTICAL_IN_BASE
from vpr_ros.geometry import compose, inverse, quat_to_matrix
from vpr_ros.mapping.map_store import ModelIdentity
from vpr_ros.verification.geometry import rotation_angle_deg
from vpr_ros.verification.verifier import Verifier

CODEC = FleetCodec(ModelIdentity("fleet-model", "ab" * 32, 224, 2048))
A, B = Robot("robot_a", 1), Robot("robot_b", 2)


@pytest.fixture(scope="module")
def drives():
    a, b = corridor_traversals(10)
    v = Verifier(VerificationConfig(features="sift"))

    def feats(t, i, depth=True):
        f = v.features(t.images[i])
        return f.with_depth(t.depths[i], t.intrinsics) if depth else \
            type(f)(f.kind, f.keypoints, f.descriptors, f.image_size, None, t.intrinsics)

    return a, b, v, feats


OPTICAL = tuple(OPTICAL_IN_BASE)
#: robot_b's camera sits 0.3 m ahead of, 0.1 m right of and 0.2 m above its base origin
CAMERA_B = compose((0.3, -0.1, 0.2, 0.0, 0.0, 0.0, 1.0), OPTICAL)


def _errors(pose, truth_a, truth_b):
    R_true, t_true = relative_pose(truth_a, truth_b)
    rot = rotation_angle_deg(quat_to_matrix(pose[3:]).T @ R_true)
    return rot, float(np.linalg.norm(np.array(pose[:3]) - t_true))


@pytest.mark.parametrize("own_has_depth", [True, False])
def test_a_verified_closure_has_the_true_metric_pose(drives, own_has_depth):
    a, b, v, feats = drives
    for i in (3, 6):
        theirs = feats(b, i)  # robot_b's keyframe, with its depth and camera model
        packet = encode_features(CODEC, B, A, 1, 100 + i, b.stamps[i], i, theirs, CAMERA_B, b.poses[i])
        reply = decode_features(CODEC, packet)
        assert (reply.sender, reply.to, reply.keyframe, reply.for_keyframe) == (B, A, 100 + i, i)
        assert np.array_equal(reply.features.descriptors, theirs.descriptors)
        assert len(packet) < theirs.nbytes + 300  # the features, the camera model, two poses and a small head
        own = feats(a, i, depth=own_has_depth)
        assert reply.camera_in_base == pytest.approx(CAMERA_B) and reply.pose == pytest.approx(b.poses[i])
        closure, why = closure_of(v, A, i, a.stamps[i], own, B, 100 + i, reply.stamp,
                                  reply.features, 0.8, OPTICAL, reply.camera_in_base)
        assert closure is not None, why
        rot, trans = _errors(closure.camera_pose, a.camera_poses[i], b.camera_poses[i])
        # the base frames: robot_a's camera at its base origin, robot_b's mounted at CAMERA_B
        base_a, base_b = compose(a.camera_poses[i], inverse(OPTICAL)), compose(b.camera_poses[i], inverse(CAMERA_B))
        rot_b, trans_b = _errors(closure.pose, base_a, base_b)
        assert rot_b < 0.8 and trans_b < 0.08, (rot_b, trans_b)
        print(f"keyframe {i}, own depth {own_has_depth}: {rot:.3f} deg, {100 * trans:.1f} cm, {closure.inliers} inliers")
        assert rot < 0.8 and trans < 0.08, (rot, trans)  # measured 0.06-0.08 deg, 0.1-0.6 cm
        sigma = np.sqrt(np.diag(closure.covariance))
        assert np.all(sigma > 0) and trans < 6 * np.linalg.norm(sigma[:3]) + 0.01
        assert (closure.robot, closure.other, closure.other_keyframe) == (A, B, 100 + i)


def test_other_places_and_non_metric_pairs_are_refused(drives):
    a, b, v, feats = drives
    closure, why = closure_of(v, A, 1, 0.0, feats(a, 1), B, 108, 0.0, feats(b, 8), 0.7, OPTICAL, OPTICAL)
    assert closure is None and why
    no_depth = feats(b, 4, depth=False), feats(a, 4, depth=False)
    closure, why = closure_of(v, A, 4, 0.0, no_depth[1], B, 104, 0.0, no_depth[0], 0.9, OPTICAL, OPTICAL)
    assert closure is None and "metric" in why


def test_requests_and_damaged_or_hostile_feature_packets():
    req = encode_request(CODEC, A, B, 5, [(104, 4, 0.75), (106, 6, 0.5)])
    got = decode_request(CODEC, req)
    assert (got.sender, got.to, got.seq, got.pairs) == (A, B, 5, [(104, 4, 0.75), (106, 6, 0.5)])
    from vpr_ros.verification.features import LocalFeatures

    rng = np.random.default_rng(0)
    f = LocalFeatures("sift", rng.random((20, 2), np.float32) * 100, rng.random((20, 128), np.float32), (320, 240))
    packet = encode_features(CODEC, B, A, 1, 7, 1.5, 3, f, OPTICAL, (1.0, 2.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    bad = bytearray(packet)
    bad[60] ^= 1
    with pytest.raises(FleetError, match="checksum"):
        decode_features(CODEC, bytes(bad))
    # a well-sealed packet that claims more features than it carries: refused before any allocation
    import struct
    import zlib

    body = bytearray(packet[:-4])
    at = body.index(b"sift") + 4 + 4  # width u16, height u16, then n u32
    body[at:at + 4] = struct.pack("<I", 19999)
    forged = bytes(body) + struct.pack("<I", zlib.crc32(bytes(body)))
    with pytest.raises(FleetError, match="truncated"):
        decode_features(CODEC, forged)
    with pytest.raises(ForeignModel, match="robot 'robot_b' \\(id 2\\) runs another model"):
        decode_features(FleetCodec(ModelIdentity("x", "cd" * 32, 224, 2048)), packet)
    with pytest.raises(FleetError, match="kind 2"):
        decode_request(CODEC, packet)


def test_the_inverse_covariance_matches_sampling():
    """The covariance of an inverted pose from the Jacobian equals the spread of inverted samples."""
    import cv2

    from vpr_ros.geometry import inverse, matrix_to_quat

    pose = (0.4, -0.2, 1.5, *matrix_to_quat(cv2.Rodrigues(np.array([0.1, -0.3, 0.2]))[0]))
    cov = np.diag([1e-4, 2e-4, 4e-4, 1e-5, 2e-5, 1e-5])
    rng = np.random.default_rng(1)
    r0 = cv2.Rodrigues(quat_to_matrix(pose[3:]))[0].ravel()
    samples = []
    for d in rng.multivariate_normal(np.zeros(6), cov, 4000):
        R = cv2.Rodrigues(r0 + d[3:])[0]
        inv = inverse((*(np.array(pose[:3]) + d[:3]), *matrix_to_quat(R)))
        samples.append(np.r_[inv[:3], cv2.Rodrigues(quat_to_matrix(inv[3:]))[0].ravel()])
    empirical = np.cov(np.array(samples).T)
    predicted = inverse_covariance(pose, cov)
    assert np.allclose(np.sqrt(np.diag(predicted)), np.sqrt(np.diag(empirical)), rtol=0.1)
