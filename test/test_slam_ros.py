"""Live loop closure through the real map_builder node, proven on the consumer's own rules: a
single rendered session with drifting odometry and revisits is streamed to the node (images,
aligned depth, CameraInfo, odometry), and every pair it publishes on vpr/loop_closures is fed into a
pose graph that maps ``[t_cur, t_pre]`` to its own keyframes exactly as LIO-SAM's
``detectLoopClosureExternal`` does, optimised incrementally with GTSAM's ISAM2. Also: keyframe
poses that follow the back end's optimised nav_msgs/Path, on disk and in a localizer's /vpr/pose."""
from __future__ import annotations

import math

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
gtsam = pytest.importorskip("gtsam")
from geometry_msgs.msg import PoseStamped  # noqa: E402
from nav_msgs.msg import Odometry, Path  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402

from vpr_ros.demo.pose_graph import LioSamStyleBackEnd  # noqa: E402
from vpr_ros.mapping.map_store import VprMap  # noqa: E402
from vpr_ros.ros.conversions import pose_msg, read_table, rgb_to_image, sec_to_stamp  # noqa: E402

from conftest import HANG_GUARD_S  # noqa: E402
from test_nodes import Spinning, odometry, overrides, until  # noqa: E402
from test_verification_ros import camera_info, depth_msg  # noqa: E402

pytestmark = pytest.mark.ros

@pytest.fixture(scope="module")
def drive():
    from vpr_ros.demo.slam_drive import slam_drive

    return slam_drive(places=20, laps=3)


class Feeder:
    """Publishes a drive to a map builder node frame by frame, waiting (on events) for each frame to
    be encoded; collects what the node publishes."""

    def __init__(self, node, name="slam_feeder", path_topic=None) -> None:
        self.mb = node
        self.n = rclpy.create_node(name)
        self.pub_img = self.n.create_publisher(Image, "image", 50)
        self.pub_depth = self.n.create_publisher(Image, "depth", 50)
        self.pub_info = self.n.create_publisher(CameraInfo, "camera_info", 5)
        self.pub_odom = self.n.create_publisher(Odometry, "odom", 50)
        self.pub_path = self.n.create_publisher(Path, path_topic, 5) if path_topic else None
        self.pairs: list[tuple[float, float, int]] = []  # (t_cur, t_pre, frames published when it arrived)
        self.rows: dict[float, dict] = {}
        self.sent = 0
        self.n.create_subscription(Float64MultiArray, "vpr/loop_closures",
                                   lambda m: self.pairs.append((m.data[0], m.data[1], self.sent)), 50)

        self.decisions = 0

        def table(m):
            self.decisions += 1
            self.rows.update((round(r["t_query"], 6), r) for r in read_table(m))
        self.n.create_subscription(Float64MultiArray, "vpr/loop_closure_table", table, 50)
        pubs = [self.pub_img, self.pub_depth, self.pub_info, self.pub_odom] + ([self.pub_path] if path_topic else [])
        assert until(lambda: all(p.get_subscription_count() for p in pubs), spin=self.n)

    def camera(self, cam) -> None:
        self.pub_info.publish(camera_info(cam))
        assert until(lambda: "image" in self.mb.intrinsics, spin=self.n)

    def frame(self, img, depth, t, pose) -> None:
        before = self.mb.keyframes
        self.pub_odom.publish(odometry(t, pose, "odom"))
        self.pub_depth.publish(depth_msg(depth, t))
        depths = self.mb._depths["image"]
        assert until(lambda: depths and depths[-1][0] == t, spin=self.n)  # the depth is there before its image
        self.pub_img.publish(rgb_to_image(img, t))
        self.sent += 1
        assert until(lambda: self.mb.keyframes == before + 1, timeout=60, spin=self.n)  # encoded (and checked)
        # everything the node published about it has arrived (it counts what it sends)
        assert until(lambda: len(self.pairs) == self.mb.loop_closures and self.decisions == self.mb.loop_decisions,
                     spin=self.n)

    def close(self) -> None:
        self.n.destroy_node()


@pytest.mark.slow
def test_live_closures_through_the_node_feed_a_lio_sam_style_pose_graph(rclpy_context, tmp_path, drive, tiny_backend):
    from vpr_ros.ros.map_builder_node import MapBuilderNode

    node = MapBuilderNode(backend=tiny_backend, parameter_overrides=overrides(
        map_dir=str(tmp_path / "map"), qos="reliable", pose_qos="reliable", autosave_period=0.0, max_pose_wait=30.0,
        depth_topics=["depth"], **{"keyframes.min_distance": 0.5, "loop_closure.enabled": True,
                                   "loop_closure.score_threshold": -1.0}))
    s = Spinning(node)
    back_end = LioSamStyleBackEnd(drive.odometry[0])
    used: list[tuple[int, int, int]] = []  # (cur key, pre key, frames sent when the pair arrived)
    try:
        f = Feeder(node)
        f.camera(drive.intrinsics)
        taken = 0
        for k, (img, d, t) in enumerate(zip(drive.images, drive.depths, drive.stamps)):
            back_end.add_keyframe(t, drive.increments[k - 1] if k else None)  # the back end's own keyframe
            f.frame(img, d, t, drive.odometry[k])
            for t_cur, t_pre, at in f.pairs[taken:]:  # the back end's loop thread
                keys = back_end.add_loop(t_cur, t_pre, f.rows[round(t_cur, 6)])
                if keys is not None:
                    used.append((*keys, at))
            taken = len(f.pairs)
        f.close()
    finally:
        s.stop()
    assert len(used) >= 10, (f.pairs, used)
    for cur, pre, _ in used:  # precision 1.00: each pair joins keyframes at the same place
        assert drive.laps[cur] == 2 and drive.laps[pre] == 0
        assert np.linalg.norm(np.subtract(drive.truth[cur][:3], drive.truth[pre][:3])) < 1.5
    lap2 = [i for i, lap in enumerate(drive.laps) if lap == 2]
    # while the revisit is driven: each pair arrives before the next frame is sent (not after a save)
    assert all(at == cur + 1 for cur, _, at in used) and used[0][2] <= lap2[-1]
    truth = np.array([p[:3] for p in drive.truth])
    rmse = lambda x: float(np.sqrt(np.mean(np.sum((x - truth) ** 2, axis=1))))  # noqa: E731
    odo, graph = rmse(np.array([p[:3] for p in drive.odometry])), rmse(back_end.positions())
    print(f"{len(used)} loop closures used; trajectory RMSE odometry {odo:.3f} m, ISAM2 with closures {graph:.3f} m")
    assert graph < 0.5 * odo
    vmap = VprMap.load(tmp_path / "map")
    assert len(vmap) == len(drive.images) and vmap.manifest.index_type == "hnsw"


def test_keyframe_poses_follow_the_back_ends_path_on_disk_and_in_vpr_pose(rclpy_context, tmp_path, drive,
                                                                           tiny_backend):
    from vpr_ros.ros.localizer_node import LocalizerNode
    from vpr_ros.ros.map_builder_node import MapBuilderNode
    from vpr_ros.ros.player import QueryPlayer

    frames = list(range(8))
    topic = "lio_sam/mapping/path"
    node = MapBuilderNode(backend=tiny_backend, parameter_overrides=overrides(
        map_dir=str(tmp_path / "map"), qos="reliable", pose_qos="reliable", autosave_period=0.0, max_pose_wait=30.0,
        depth_topics=["depth"], optimized_path_topic=topic, **{"keyframes.min_distance": 0.5}))
    s = Spinning(node)
    corrected = {k: drive.truth[k] for k in frames}  # the back end has removed the odometry's drift

    def path(poses, frame="odom"):
        msg = Path()
        msg.header.frame_id = frame
        for k, p in poses.items():
            ps = PoseStamped()
            ps.header.stamp, ps.header.frame_id = sec_to_stamp(drive.stamps[k]), frame
            ps.pose = pose_msg(p)
            msg.poses.append(ps)
        return msg

    try:
        f = Feeder(node, path_topic=topic)
        f.camera(drive.intrinsics)
        for k in frames:
            f.frame(drive.images[k], drive.depths[k], drive.stamps[k], drive.odometry[k])
        bad = dict(corrected)
        bad[3] = (float("nan"),) * 7
        f.pub_path.publish(path(bad))  # refused whole: nothing moves
        assert until(lambda: "non-finite" in node.last_error, spin=f.n)
        f.pub_path.publish(path({k: corrected[k] for k in frames[:4]}, "map"))  # another frame, half covered
        assert until(lambda: "reaches only 4 of the 8 keyframes" in node.last_error, spin=f.n)  # no nearest beyond 50 ms
        assert node.path_updates == 0
        f.pub_path.publish(path(corrected))
        assert until(lambda: node.path_updates == 1, spin=f.n)
        f.close()
    finally:
        s.stop()
    vmap = VprMap.load(tmp_path / "map")
    for k in frames:
        assert vmap.keyframes[k].pose == pytest.approx(corrected[k], abs=1e-12)  # exactly, on disk
    loc = LocalizerNode(parameter_overrides=overrides(map_dir=str(tmp_path / "map"), qos="reliable",
                                                     score_threshold=-1.0, **{"verification.loop_closures": "none"}))
    s = Spinning(loc)
    try:
        p = QueryPlayer("image")
        assert p.wait_for_localizer(HANG_GUARD_S)
        assert p.play([drive.images[5]], [900.0], timeout=HANG_GUARD_S) == 1
        got = p.log.poses[900.0].pose.pose
        top = int(p.log.tables[900.0][0]["db_id"])
        assert top == 5
        expect = corrected[5]
        assert [got.position.x, got.position.y, got.position.z, got.orientation.x, got.orientation.y,
                got.orientation.z, got.orientation.w] == pytest.approx(expect, abs=1e-12)
        p.destroy_node()
    finally:
        s.stop()
    assert math.isfinite(vmap.keyframes[0].pose[0])


@pytest.mark.slow
def test_a_new_session_on_a_saved_map_is_aligned_through_the_node(rclpy_context, tmp_path, drive, tiny_backend):
    """Session 0: the first lap, in the map frame. Session 1 never meets the map (no loop closure):
    stored unaligned. The node then starts session 2 and drives the third lap with odometry in a
    frame of its own; its verified metric closures with session 0 (marked prior, not sent as pairs)
    align it, and only those (never session 1's): every keyframe of session 2 ends up within 5 cm of
    the truth in the map frame, and the map stores how."""
    from vpr_ros.config import KeyframeConfig
    from vpr_ros.geometry import compose, inverse, planar_pose
    from vpr_ros.mapping.builder import MapBuilder
    from vpr_ros.mapping.map_store import Keyframe
    from vpr_ros.ros.map_builder_node import MapBuilderNode

    lap0 = [i for i, lap in enumerate(drive.laps) if lap == 0]
    lap2 = [i for i, lap in enumerate(drive.laps) if lap == 2]
    first = MapBuilder(tiny_backend, KeyframeConfig(min_distance=0.5), intrinsics=drive.intrinsics)
    for i in lap0:
        desc, feats = first.encode([drive.images[i]], [drive.depths[i]], drive.intrinsics)
        first.add_encoded(desc, [Keyframe(drive.stamps[i], drive.truth[i])], feats)
    first.map.set_map_frame("odom")  # the frame the second session's odometry messages name
    first.save(tmp_path / "map")
    # session 1: six keyframes of the second lap in a frame 20 m away, without loop closure: it is
    # stored as unaligned (never as if it were in the map's frame) and never anchors session 2
    lap1 = [i for i, lap in enumerate(drive.laps) if lap == 1][:6]
    far = planar_pose(20.0, 20.0, 1.0)
    node = MapBuilderNode(backend=tiny_backend, parameter_overrides=overrides(
        map_dir=str(tmp_path / "map"), qos="reliable", pose_qos="reliable", autosave_period=0.0, max_pose_wait=30.0,
        depth_topics=["depth"], **{"keyframes.min_distance": 0.5}))
    s = Spinning(node)
    try:
        f = Feeder(node, "lost_feeder")
        f.camera(drive.intrinsics)
        for i in lap1:
            f.frame(drive.images[i], drive.depths[i], drive.stamps[i] + 500.0, compose(far, drive.truth[i]))
        f.close()
    finally:
        s.stop()
    lost = VprMap.load(tmp_path / "map").session_record(1)
    assert lost.state == "unaligned" and "loop closure is off" in lost.reason and not lost.anchor
    T = compose(planar_pose(4.0, -1.5, 0.6), (0.0, 0.0, 0.1, 0.0, 0.0, 0.0, 1.0))  # session 2's frame in the map's
    node = MapBuilderNode(backend=tiny_backend, parameter_overrides=overrides(
        map_dir=str(tmp_path / "map"), qos="reliable", pose_qos="reliable", autosave_period=0.0, max_pose_wait=30.0,
        depth_topics=["depth"], **{"keyframes.min_distance": 0.5, "loop_closure.enabled": True,
                                   "loop_closure.score_threshold": -1.0}))
    s = Spinning(node)
    try:
        f = Feeder(node, "session_feeder")
        f.camera(drive.intrinsics)
        for i in lap2:
            f.frame(drive.images[i], drive.depths[i], drive.stamps[i] + 1000.0, compose(inverse(T), drive.truth[i]))
        assert node.tracker.aligner.record.state == "aligned", node.tracker.aligner.record
        assert not f.pairs and node.loops_prior >= 3  # closures with session 0: never pairs
        f.close()
    finally:
        s.stop()
    vmap = VprMap.load(tmp_path / "map")
    assert vmap.sessions() == {0: len(lap0), 1: len(lap1), 2: len(lap2)}
    record = vmap.session_record(2)  # stored with the map: aligned, from which closures, residuals
    assert record.state == "aligned" and record.anchors == (0,) and record.inliers >= 3 and record.extent_m >= 2.0
    assert record.spread_m < 0.05 and vmap.session_record(0).state == "reference"
    for k, i in zip([k for k in vmap.keyframes if k.session == 2], lap2):
        assert np.linalg.norm(np.subtract(k.pose[:3], drive.truth[i][:3])) < 0.05, (k.id, k.pose, drive.truth[i])
