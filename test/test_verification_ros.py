"""Verified loop closures through the real nodes: a map builder fed images, aligned depth and
CameraInfo of a rendered 3-D corridor stores 3-D points per keyframe; a localizer with CameraInfo
publishes loop closures whose relative pose is metric and whose /vpr/pose is the robot's own."""
from __future__ import annotations

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from geometry_msgs.msg import PoseWithCovarianceStamped  # noqa: E402
from nav_msgs.msg import Odometry  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from vpr_ros.geometry import compose, inverse  # noqa: E402
from vpr_ros.mapping.map_store import VprMap  # noqa: E402
from vpr_ros.ros.conversions import rgb_to_image  # noqa: E402
from vpr_ros.ros.player import QueryPlayer  # noqa: E402

from conftest import HANG_GUARD_S  # noqa: E402
from test_nodes import Spinning, odometry, overrides, until  # noqa: E402

pytestmark = pytest.mark.ros


def camera_info(cam) -> CameraInfo:
    msg = CameraInfo(width=cam.width, height=cam.height)
    msg.k = [cam.fx, 0.0, cam.cx, 0.0, cam.fy, cam.cy, 0.0, 0.0, 1.0]
    return msg


def _trigger(node, client):
    assert client.wait_for_service(timeout_sec=20)
    fut = client.call_async(Trigger.Request())
    rclpy.spin_until_future_complete(node, fut, timeout_sec=20)
    assert fut.done()
    return fut.result()


def depth_msg(depth: np.ndarray, t: float) -> Image:
    from vpr_ros.ros.conversions import depth_to_image

    return depth_to_image(depth, t)


@pytest.fixture(scope="module")
def drives():
    from vpr_ros.demo.scene3d import corridor_traversals

    return corridor_traversals(10)


def test_metric_loop_closures_through_the_nodes(rclpy_context, tmp_path, drives):
    from vpr_ros.ros.localizer_node import LocalizerNode
    from vpr_ros.ros.map_builder_node import MapBuilderNode

    first, second = drives
    map_dir = tmp_path / "map3d"
    mb = MapBuilderNode(parameter_overrides=overrides(
        map_dir=str(map_dir), qos="reliable", pose_qos="reliable", autosave_period=0.0, max_pose_wait=30.0,
        depth_topics=["depth"], **{"keyframes.min_distance": 0.5}))
    s = Spinning(mb)
    feeder = rclpy.create_node("scene_feeder")
    try:
        pub_img = feeder.create_publisher(Image, "image", 50)
        pub_depth = feeder.create_publisher(Image, "depth", 50)
        pub_info = feeder.create_publisher(CameraInfo, "camera_info", 5)
        pub_odom = feeder.create_publisher(Odometry, "odom", 50)
        assert until(lambda: all(p.get_subscription_count() for p in (pub_img, pub_depth, pub_info, pub_odom)),
                     spin=feeder)
        pub_info.publish(camera_info(first.intrinsics))
        assert until(lambda: "image" in mb.intrinsics, spin=feeder)
        for k, (img, d, t, pose) in enumerate(zip(first.images, first.depths, first.stamps, first.poses)):
            pub_odom.publish(odometry(t, pose, "map"))
            pub_depth.publish(depth_msg(d, t))
            assert until(lambda k=k: len(mb._depths["image"]) == k + 1, spin=feeder)  # depth before its image
            pub_img.publish(rgb_to_image(img, t))
        assert until(lambda: mb.keyframes == len(first.images), spin=feeder)
        assert mb.with_depth == len(first.images) and mb.depth_rejected == 0
        # a depth image of the wrong size: the keyframe is kept (without 3-D points), the depth counted
        far = compose(first.poses[-1], (5.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0))
        pub_odom.publish(odometry(999.0, far, "map"))
        pub_depth.publish(depth_msg(np.ones((10, 10), np.float32), 999.0))
        assert until(lambda: len(mb._depths["image"]) == len(first.images) + 1, spin=feeder)
        pub_img.publish(rgb_to_image(first.images[0], 999.0))
        assert until(lambda: mb.keyframes == len(first.images) + 1, spin=feeder)
        assert mb.depth_rejected == 1 and mb.with_depth == len(first.images) and "10x10" in mb.last_error
    finally:
        feeder.destroy_node()
        s.stop()  # saves
    vmap = VprMap.load(map_dir)
    f = vmap.local_features(3)
    assert vmap.manifest.local_features == "sift" and f.points3d is not None and f.intrinsics is not None
    assert np.isfinite(f.points3d).all(axis=1).mean() > 0.9

    loc = LocalizerNode(parameter_overrides=overrides(map_dir=str(map_dir), qos="reliable", score_threshold=-1.0,
                                                     temporal_consistency=1, max_loop_closure_rate=100.0,
                                                     **{"initial_pose.enabled": True}))
    s = Spinning(loc)
    try:
        p = QueryPlayer("image")
        initial: list = []
        p.create_subscription(PoseWithCovarianceStamped, "/initialpose", initial.append, 10)  # as AMCL does
        info = p.create_publisher(CameraInfo, "camera_info", 5)
        assert p.wait_for_localizer(HANG_GUARD_S)
        assert until(lambda: info.get_subscription_count() > 0, spin=p)
        info.publish(camera_info(second.intrinsics))
        assert until(lambda: "image" in loc.intrinsics, spin=p)
        assert p.play(second.images, second.stamps, timeout=HANG_GUARD_S) == len(second.images)
        verified = [r for r in p.log.loop_table if r["status"] == 1.0]
        assert len(verified) >= len(second.images) // 2, p.log.loop_table
        kf_pose = {round(t, 6): pose for t, pose in zip(first.stamps, first.poses)}
        true_pose = {round(t, 6): pose for t, pose in zip(second.stamps, second.poses)}
        for r in verified:
            assert r["method"] == 3.0 and r["inliers"] >= 30 and r["cov_x"] < 0.01  # metric (PnP), tight
            true_rel = compose(inverse(kf_pose[round(r["t_match"], 6)]), true_pose[round(r["t_query"], 6)])
            assert np.linalg.norm(np.array([r["rel_x"], r["rel_y"], r["rel_z"]]) - true_rel[:3]) < 0.1
            pose = p.log.poses[round(r["t_query"], 6)].pose.pose.position
            assert np.linalg.norm(np.array([pose.x, pose.y, pose.z]) - true_pose[round(r["t_query"], 6)][:3]) < 0.1
        # Nav2 relocalisation: mode 'once' sent exactly one initial pose, from a verified metric match
        assert until(lambda: len(initial) == 1, spin=p) and loc.counters.initial_poses == 1
        msg = initial[0]
        t = round(msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9, 6)
        assert msg.header.frame_id == "map" and t in true_pose
        pos = msg.pose.pose.position
        assert np.linalg.norm(np.array([pos.x, pos.y, pos.z]) - true_pose[t][:3]) < 0.1
        cov = np.array(msg.pose.covariance).reshape(6, 6)
        assert 0.05 ** 2 <= cov[0, 0] <= 0.5 ** 2 and 0.05 ** 2 <= cov[1, 1] <= 0.5 ** 2 and np.allclose(cov, cov.T)
        assert min(cov[i, i] for i in (3, 4, 5)) >= 0.02 ** 2  # floored: PnP alone claims far less
        # the confidence gate: with max_position_sigma 0 nothing qualifies, even when armed
        trigger = p.create_client(Trigger, "vpr/relocalize")
        assert loc.set_parameters([Parameter("initial_pose.max_position_sigma", value=0.0)])[0].successful
        assert _trigger(p, trigger).success
        assert p.play(second.images[:3], [s_ + 1000.0 for s_ in second.stamps[:3]], timeout=HANG_GUARD_S) == 3
        assert loc.counters.initial_poses == 1
        # armed again with a usable gate: the next verified metric pose is sent
        assert loc.set_parameters([Parameter("initial_pose.max_position_sigma", value=0.5)])[0].successful
        assert p.play(second.images[:3], [s_ + 2000.0 for s_ in second.stamps[:3]], timeout=HANG_GUARD_S) == 3
        assert until(lambda: len(initial) == 2, spin=p) and loc.counters.initial_poses == 2
        p.destroy_node()
    finally:
        s.stop()
