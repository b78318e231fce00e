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


def test_with_drifting_odometry_the_robots_agree_where_they_met(tmp_path):
    """The three drives of the fleet benchmark, odometry drifting 0.05 deg/m and 0.2 % in scale. No
    frame is the truth any more (robot_a's own odometry drifts too), so the alignment is measured
    where robots met: for every closure, the two keyframes' relative pose in the merged map against
    the true one. One rigid transform per robot, estimated from those meetings, keeps them within
    the issue's 5 cm and 1 deg; far from the meetings each trajectory keeps its own drift, which a
    pose-graph back end fed with the closures removes (docs/fleet.md)."""
    from vpr_ros.demo.fleet_drives import fleet_drives
    from vpr_ros.fleet.codec import Robot
    from vpr_ros.fleet.merge import merge_maps, offline_closures

    drives = fleet_drives()
    places = np.random.default_rng(5).standard_normal((20, 2048)).astype(np.float32)  # one vector a place
    v = Verifier(VerificationConfig(features="sift"))
    robots, maps = [], []
    for rid, (name, d) in enumerate(drives.items(), 1):
        m = VprMap.create(MODEL)
        feats = [v.features(img).with_depth(dep, d.intrinsics) for img, dep in zip(d.images, d.depths)]
        rng = np.random.default_rng(20 + rid)
        x = places[d.places] + 0.5 * rng.standard_normal((len(d.places), 2048)).astype(np.float32)
        m.add(x / np.linalg.norm(x, axis=1, keepdims=True), [Keyframe(t, p) for t, p in zip(d.times, d.odometry)],
              feats)
        robots.append(Robot(name, rid))
        maps.append(m)
    closures = offline_closures(robots, maps)
    report = merge_maps(robots, maps, tmp_path / "merged", 1, closures)
    assert not report.left_out
    merged = VprMap.load(tmp_path / "merged")
    at = {(kf.image_ref.split("#")[0], int(kf.image_ref.split("#")[1])): kf.pose for kf in merged.keyframes}
    errs = []
    for c in closures:
        mine, theirs = at[(c.robot.name, c.keyframe)], at[(c.other.name, c.other_keyframe)]
        truth = compose(inverse(drives[c.robot.name].world[c.keyframe]), drives[c.other.name].world[c.other_keyframe])
        errs.append(_error(compose(inverse(mine), theirs), truth))
    worst = (max(e[0] for e in errs), max(e[1] for e in errs))
    print(f"where robots met ({len(closures)} closures): {100 * worst[0]:.2f} cm, {worst[1]:.3f} deg (worst)")
    assert worst[0] <= 0.05 and worst[1] <= 1.0  # measured 0.45 cm, 0.048 deg
    merged.close()
