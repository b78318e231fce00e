"""Merged maps (issue 35): three robots' maps in three different map frames, merged by the real
command: every robot aligned to the reference robot's frame from the inter-robot closures (the
fleet exchange run offline: codes, requests, real SIFT and PnP on rendered drives), keyframes at
their true poses in that frame, one session per robot with provenance, usable by a localizer.
Global descriptors are synthetic place vectors, as in test_fleet_peers.py."""
from __future__ import annotations

import numpy as np
import pytest

from test_fleet_peers import place_views
from vpr_ros.config import VerificationConfig
from vpr_ros.demo.scene3d import Scene, corridor_traversals
from vpr_ros.geometry import compose, inverse, planar_pose, quat_to_matrix
from vpr_ros.mapping.map_store import Keyframe, ModelIdentity, VprMap
from vpr_ros.mapping.sessions import ALIGNED, REFERENCE
from vpr_ros.verification.geometry import rotation_angle_deg
from vpr_ros.verification.verifier import Verifier

MODEL = ModelIdentity("fleet-model", "ab" * 32, 224, 2048)
#: where each robot's map frame lies in the world (robot_a's frame is the world's)
FRAMES = {"robot_a": (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0), "robot_b": planar_pose(3.0, -2.0, 0.7),
          "robot_c": planar_pose(-5.0, 4.0, -2.1)}


@pytest.fixture(scope="module")
def robot_maps(tmp_path_factory):
    scene = Scene.corridor(length=20.0, seed=3)
    a, b = corridor_traversals(12, scene=scene, seed=3)
    _, c = corridor_traversals(12, scene=scene, seed=8)
    v = Verifier(VerificationConfig(features="sift"))
    root = tmp_path_factory.mktemp("fleet_maps")
    truth = {}
    for name, drive, positions, seed in (("robot_a", a, list(range(10)), 1), ("robot_b", b, [5, 6, 7, 8, 9, 10, 11], 2),
                                         ("robot_c", c, [0, 1, 2, 3, 4], 3)):
        m = VprMap.create(MODEL)
        world = [drive.poses[p] for p in positions]
        own = [compose(inverse(FRAMES[name]), w) for w in world]  # the robot's odometry frame
        feats = [v.features(drive.images[p]).with_depth(drive.depths[p], drive.intrinsics) for p in positions]
        m.add(place_views(positions, seed), [Keyframe(100.0 * seed + k, tuple(p)) for k, p in enumerate(own)], feats)
        m.save(root / name)
        m.close()
        truth[name] = world
    return root, truth


def _error(pose, truth):  # type: ignore[no-untyped-def]
    rot = rotation_angle_deg(quat_to_matrix(pose[3:]).T @ quat_to_matrix(truth[3:]))
    return float(np.linalg.norm(np.subtract(pose[:3], truth[:3]))), rot


def test_the_command_merges_three_robots_into_the_reference_frame(robot_maps, tmp_path, capsys):
    from vpr_ros.cli.merge_maps import main

    root, truth = robot_maps
    out = tmp_path / "merged"
    assert main([str(root / n) for n in ("robot_a", "robot_b", "robot_c")] +
                ["--output", str(out), "--robot-ids", "1", "2", "3"]) == 0
    text = capsys.readouterr().out
    assert "robot 'robot_b' (id 2): aligned through 1 -> 2" in text and "robot 'robot_c' (id 3): aligned" in text
    merged = VprMap.load(out)
    assert len(merged) == 22 and merged.sessions() == {0: 10, 1: 7, 2: 5}
    assert merged.session_record(0).state == REFERENCE
    assert merged.session_record(1).state == ALIGNED and merged.session_record(2).state == ALIGNED
    worst = (0.0, 0.0)
    for kf in merged.keyframes:
        name, own_id = kf.image_ref.split("#")
        t_err, r_err = _error(kf.pose, truth[name][int(own_id)])
        worst = (max(worst[0], t_err), max(worst[1], r_err))
    print(f"merged-map alignment error: {100 * worst[0]:.2f} cm, {worst[1]:.3f} deg (worst keyframe)")
    assert worst[0] <= 0.05 and worst[1] <= 1.0  # the bound; measured in the printed line
    assert merged.local_features(15) is not None and merged.local_features(15).points3d is not None
    scores, ids = merged.search(place_views([7], 9), 3)  # a view of place 7: robot_a's and robot_b's keyframes
    assert {merged.keyframes[i].image_ref.split("#")[0] for i in ids[0][:2]} == {"robot_a", "robot_b"}
    merged.close()


def test_a_robot_that_cannot_be_aligned_is_left_out_with_the_reason(robot_maps, tmp_path, capsys):
    from vpr_ros.cli.merge_maps import main

    root, _ = robot_maps
    out = tmp_path / "merged"
    # robot_c overlaps robot_a only: merged with robot_b alone it meets no one
    assert main([str(root / "robot_b"), str(root / "robot_c"), "--output", str(out)]) == 3
    text = capsys.readouterr().out
    assert "robot 'robot_c' (id 1): left out" in text
    assert len(VprMap.load(out)) == 7
    assert main([str(root / "robot_a"), str(root / "robot_b"), "--output", str(out)]) == 2  # never overwrites
    assert "holds a map already" in capsys.readouterr().err

