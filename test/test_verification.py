"""Geometric verification with known geometry: views of a textured multi-plane 3-D world rendered
by a pinhole camera at known poses (vpr_ros.demo.scene3d), so every estimate is compared with
ground truth: rotation error (deg), translation-direction error (deg) from the essential matrix,
metric translation error (m) with keyframe depth; views of different places are refused."""
from __future__ import annotations

import math

import numpy as np
import pytest

from vpr_ros.config import LocalizerConfig, VerificationConfig
from vpr_ros.demo.scene3d import DEMO_CAMERA, Scene, look_pose, relative_pose
from vpr_ros.errors import ImageError
from vpr_ros.geometry import quat_to_matrix
from vpr_ros.verification.features import CameraIntrinsics
from vpr_ros.verification.geometry import rotation_angle_deg
from vpr_ros.verification.verifier import Verifier

INTR = CameraIntrinsics(DEMO_CAMERA.fx, DEMO_CAMERA.fy, DEMO_CAMERA.cx, DEMO_CAMERA.cy, DEMO_CAMERA.width,
                        DEMO_CAMERA.height)
KEYFRAME = look_pose((3.0, 0.3, 1.4), 0.05)
QUERIES = [look_pose((3.6, -0.2, 1.5), -0.12, 0.03), look_pose((2.4, 0.5, 1.35), 0.15, -0.04),
           look_pose((4.0, 0.0, 1.45), 0.0, 0.05)]


@pytest.fixture(scope="module")
def scene():
    return Scene.corridor(seed=1)


def _views(scene, kind, query):
    v = Verifier(VerificationConfig(features=kind, max_features=1000))
    rk, dk = scene.render(KEYFRAME, DEMO_CAMERA)
    rq, _ = scene.render(query, DEMO_CAMERA)
    fq = v.features(rq)
    fq.intrinsics = INTR
    return v, v.features(rk), dk, fq


@pytest.mark.parametrize("kind", ["orb", "sift"])
@pytest.mark.parametrize("qi", range(len(QUERIES)))
def test_metric_relative_pose_with_keyframe_depth(scene, kind, qi):
    v, fk, dk, fq = _views(scene, kind, QUERIES[qi])
    r = v.verify(fq, fk.with_depth(dk, INTR))
    assert r.verified and r.method == "pnp" and r.metric, r.reason
    R_true, t_true = relative_pose(KEYFRAME, QUERIES[qi])
    rot_err = rotation_angle_deg(quat_to_matrix(r.pose[3:]).T @ R_true)
    t_err = float(np.linalg.norm(np.array(r.pose[:3]) - t_true))
    assert rot_err < 0.6 and t_err < 0.06, (rot_err, t_err)
    sigma = np.sqrt(np.diag(r.covariance))
    assert np.all(sigma > 0) and np.all(sigma[:3] < 0.1)  # from the inliers: small, never zero
    assert t_err < 6 * np.linalg.norm(sigma[:3]) + 0.01  # the reported uncertainty covers the error


@pytest.mark.parametrize("qi", range(len(QUERIES)))
def test_rotation_and_direction_from_the_essential_matrix(scene, qi):
    v, fk, _, fq = _views(scene, "sift", QUERIES[qi])
    fk.intrinsics = INTR  # intrinsics but no depth: essential matrix
    r = v.verify(fq, fk)
    assert r.verified and r.method == "essential" and not r.metric, r.reason
    R_true, t_true = relative_pose(KEYFRAME, QUERIES[qi])
    rot_err = rotation_angle_deg(quat_to_matrix(r.pose[3:]).T @ R_true)
    t_dir = np.array(r.pose[:3])
    dir_err = math.degrees(math.acos(np.clip(t_dir @ (t_true / np.linalg.norm(t_true)), -1, 1)))
    assert rot_err < 1.5 and dir_err < 8.0, (rot_err, dir_err)
    assert r.covariance[0, 0] >= 1e3  # the scale is unknown and says so


@pytest.mark.parametrize("kind", ["orb", "sift"])
def test_views_of_different_places_are_refused(scene, kind):
    v, fk, dk, _ = _views(scene, kind, QUERIES[0])
    elsewhere = [look_pose((18.0, 0.5, 1.4), math.pi), look_pose((12.0, -1.2, 1.4), 1.4), look_pose((25.0, 0.0, 1.4), 0.0)]
    for pose in elsewhere:
        rq, _ = scene.render(pose, DEMO_CAMERA)
        fq = v.features(rq)
        fq.intrinsics = INTR
        r = v.verify(fq, fk.with_depth(dk, INTR))
        assert not r.verified and r.reason, pose


def test_rerank_score_puts_the_true_place_first(scene):
    v, fk, _, fq = _views(scene, "orb", QUERIES[0])
    distractors = [v.features(scene.render(look_pose((x, 0.0, 1.4), 0.0), DEMO_CAMERA)[0]) for x in (9.0, 15.0, 21.0)]
    scores = [v.rerank_score(fq, f) for f in [fk, *distractors]]
    assert scores[0] > 3 * max(scores[1:]) and scores[0] >= 20, scores


def test_bad_inputs_are_refused_with_a_reason(scene):
    v, fk, dk, fq = _views(scene, "orb", QUERIES[0])
    no_intr = v.features(scene.render(QUERIES[0], DEMO_CAMERA)[0])
    r = v.verify(no_intr, fk.with_depth(dk, INTR))
    assert not r.verified and "no camera intrinsics for the query" in r.reason
    r = v.verify(fq, fk)  # keyframe without depth or intrinsics
    assert not r.verified and "no camera intrinsics stored with the keyframe" in r.reason
    with pytest.raises(ImageError, match="depth image is 160x120 but the camera image is 320x240"):
        fk.with_depth(np.ones((120, 160), np.float32), INTR)
    blank = v.features(np.full((240, 320, 3), 128, np.uint8))
    blank.intrinsics = INTR
    r = v.verify(blank, fk.with_depth(dk, INTR))
    assert not r.verified and "too few feature matches (0" in r.reason
    sift = Verifier(VerificationConfig(features="sift")).features(scene.render(QUERIES[0], DEMO_CAMERA)[0])
    assert sift.descriptors.dtype == np.uint8 and sift.descriptors.shape[1] == 128  # stored compactly
    assert not v.verify(sift, fk).verified and "'sift' features, the map 'orb'" in v.verify(sift, fk).reason


@pytest.fixture(scope="module")
def corridor_drives():
    from vpr_ros.demo.scene3d import corridor_traversals

    return corridor_traversals(16)


def test_localizer_reranks_verifies_and_composes_a_metric_pose(tiny_backend, corridor_drives):
    """Map from the first drive (depth + intrinsics), queries from the second: verified closures
    carry the relative pose of the query robot in the keyframe's frame, and the published pose is
    the keyframe's composed with it, close to the true pose."""
    from vpr_ros.config import KeyframeConfig
    from vpr_ros.geometry import compose, inverse
    from vpr_ros.localization import Localizer
    from vpr_ros.mapping.builder import MapBuilder
    from vpr_ros.mapping.map_store import Keyframe

    first, second = corridor_drives
    vcfg = VerificationConfig()  # the defaults (SIFT)
    b = MapBuilder(tiny_backend, KeyframeConfig(min_distance=0.5), verification=vcfg)
    from vpr_ros.runtime.preprocess import preprocess_batch

    for img, d, t, pose in zip(first.images, first.depths, first.stamps, first.poses):
        desc = tiny_backend.infer(preprocess_batch([img], tiny_backend.input_size))
        b.add_encoded(desc, [Keyframe(t, pose)], [b.features(img, d, INTR)])
    cfg = LocalizerConfig(score_threshold=-1.0, temporal_consistency=1, top_k=3, max_loop_closure_rate=100.0)
    loc = Localizer(tiny_backend, b.map, cfg, vcfg)
    verified, errors = 0, []
    for img, t, true in zip(second.images, second.stamps, second.poses):
        r = loc.localize(img, t, intrinsics=INTR)
        assert r.matches[0].local_score >= 0  # re-ranked
        if r.loop is not None and r.loop.publish:
            verified += 1
            kf = r.matches[0].keyframe.pose
            true_rel = compose(inverse(kf), true)
            assert np.linalg.norm(np.array(r.relative[:3]) - np.array(true_rel[:3])) < 0.1
            errors.append(float(np.linalg.norm(np.array(r.pose[:3]) - np.array(true[:3]))))
    assert verified >= len(second.images) // 2, verified
    assert np.median(errors) < 0.05, errors  # metres: the robot's own pose, not the keyframe's
