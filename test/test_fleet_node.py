"""Three robots (issue 35) in namespaces /robot_a, /robot_b, /robot_c over the default DDS on
localhost, each with its own map builder node (real subscriptions: images, aligned depth,
CameraInfo, odometry in the robot's own frame) and its own fleet node following that map.
robot_b leaves (its nodes stop) before robot_c joins; robot_a and robot_c still close loops.
Rendered corridor drives (real SIFT with depth, real PnP); the tiny random-weight network gives
the global descriptors, whose candidates mean little: every closure must come from geometric
verification, and its relative pose (the robots' base frames) must be the true one."""
from __future__ import annotations

import threading

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from nav_msgs.msg import Odometry  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402

from conftest import HANG_GUARD_S  # noqa: E402
from test_nodes import odometry, overrides, until  # noqa: E402
from test_verification_ros import camera_info, depth_msg  # noqa: E402
from vpr_ros.demo.fleet_drives import FRAMES  # noqa: E402
from vpr_ros.demo.scene3d import Scene, corridor_traversals  # noqa: E402
from vpr_ros.geometry import compose, inverse, quat_to_matrix  # noqa: E402
from vpr_ros.ros.conversions import rgb_to_image  # noqa: E402
from vpr_ros.verification.geometry import rotation_angle_deg  # noqa: E402

pytestmark = pytest.mark.ros
IDS = {"robot_a": 1, "robot_b": 2, "robot_c": 3}


class Robot:
    """A robot's map builder and fleet node (namespace ``name``) and what feeds its map builder."""

    def __init__(self, name: str, drive, places: list[int], map_dir, feeder, ex) -> None:  # type: ignore[no-untyped-def]
        from vpr_ros.ros.fleet_node import FleetNode
        from vpr_ros.ros.map_builder_node import MapBuilderNode

        self.name, self.drive, self.places, self.ex = name, drive, places, ex
        self.builder = MapBuilderNode(namespace=name, parameter_overrides=overrides(
            map_dir=str(map_dir), qos="reliable", pose_qos="reliable", autosave_period=0.0, max_pose_wait=30.0,
            depth_topics=["depth"], **{"keyframes.min_distance": 0.5, "loop_closure.enabled": False}))
        self.fleet = FleetNode(namespace=name, parameter_overrides=[
            Parameter("robot_id", value=IDS[name]), Parameter("map_dir", value=str(map_dir)),
            Parameter("bandwidth_bytes_per_s", value=500000.0), Parameter("poll_period", value=0.2),
            Parameter("threshold", value=-1.0), Parameter("top_k", value=6), Parameter("features_timeout", value=3.0)])
        for n in (self.builder, self.fleet):
            ex.add_node(n)
        self.pubs = {"image": feeder.create_publisher(Image, f"/{name}/image", 50),
                     "depth": feeder.create_publisher(Image, f"/{name}/depth", 50),
                     "info": feeder.create_publisher(CameraInfo, f"/{name}/camera_info", 5),
                     "odom": feeder.create_publisher(Odometry, f"/{name}/odom", 50)}
        self.rows: list[list[float]] = []
        self.gone = False
        feeder.create_subscription(Float64MultiArray, f"/{name}/fleet/inter_robot_closures",
                                   lambda m: self.rows.append(list(m.data)), 50)

    def drive_it(self) -> None:
        """Publish the drive: CameraInfo, then per place odometry (its own frame), depth, image."""
        assert until(lambda: all(p.get_subscription_count() for p in self.pubs.values()))
        self.pubs["info"].publish(camera_info(self.drive.intrinsics))
        assert until(lambda: "image" in self.builder.intrinsics)
        for k, p in enumerate(self.places):
            t = 100.0 * IDS[self.name] + k
            self.pubs["odom"].publish(odometry(t, compose(inverse(FRAMES[self.name]), self.drive.poses[p]), "map"))
            self.pubs["depth"].publish(depth_msg(self.drive.depths[p], t))
            assert until(lambda k=k: len(self.builder._depths["image"]) == k + 1)
            self.pubs["image"].publish(rgb_to_image(self.drive.images[p], t))
        assert until(lambda: self.builder.keyframes == len(self.places))

    def leave(self, spinning: "Spinner") -> None:
        """Stop the robot's nodes: with the executor paused, so that no wait set holds their
        handles while they are destroyed."""
        spinning.pause()
        for n in (self.fleet, self.builder):
            self.ex.remove_node(n)
            n.destroy_node()
        self.gone = True
        spinning.resume()


class Spinner:
    """Spins ``ex`` on a thread of its own; ``pause`` returns once no spin is in progress."""

    def __init__(self, ex) -> None:  # type: ignore[no-untyped-def]
        self.ex = ex
        self.resume()

    def resume(self) -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._spin, args=(self.stop,), daemon=True)
        self.thread.start()

    def _spin(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.ex.spin_once(timeout_sec=0.05)

    def pause(self) -> None:
        """Stop spinning, then wait for the callbacks the executor's pool is still running
        (rclpy's MultiThreadedExecutor keeps them in ``_futures``)."""
        self.stop.set()
        self.thread.join(HANG_GUARD_S)
        assert until(lambda: all(f.done() for f in list(getattr(self.ex, "_futures", []))))


def test_three_robots_with_their_map_builders_close_loops_over_dds(rclpy_context, tmp_path):
    from vpr_ros.ros.fleet_node import CLOSURE_COLUMNS
    from vpr_ros.ros.node_main import stop_executor

    scene = Scene.corridor(length=20.0, seed=3)
    a_drive, b_drive = corridor_traversals(10, scene=scene, seed=3)
    _, c_drive = corridor_traversals(10, scene=scene, seed=8)
    feeder = rclpy.create_node("fleet_feeder")
    ex = MultiThreadedExecutor(num_threads=4)
    ex.add_node(feeder)
    spinner = Spinner(ex)
    robots = {}
    try:
        robots["robot_a"] = Robot("robot_a", a_drive, [0, 1, 2, 3, 4], tmp_path / "a", feeder, ex)
        robots["robot_b"] = Robot("robot_b", b_drive, [2, 3, 4, 5, 6], tmp_path / "b", feeder, ex)
        robots["robot_a"].drive_it()
        robots["robot_b"].drive_it()
        a, b = robots["robot_a"], robots["robot_b"]
        assert until(lambda: any(r[3] == 2 for r in a.rows) and any(r[3] == 1 for r in b.rows))
        b.leave(spinner)  # robot_b goes; robot_c comes later
        robots["robot_c"] = Robot("robot_c", c_drive, [0, 1, 2], tmp_path / "c", feeder, ex)
        c = robots["robot_c"]
        c.drive_it()
        assert until(lambda: any(r[3] == 3 for r in a.rows) and any(r[3] == 1 for r in c.rows))
        stats = a.fleet.peer.stats
    finally:
        spinner.pause()
        stop_executor(ex)
        for r in robots.values():
            if not r.gone:
                for n in (r.fleet, r.builder):
                    n.destroy_node()
        feeder.destroy_node()
    col = {n: i for i, n in enumerate(CLOSURE_COLUMNS)}
    checked = 0
    for r in robots.values():
        for row in r.rows:
            other = next(o for o in robots.values() if IDS[o.name] == int(row[col["other_robot_id"]]))
            mine = r.drive.poses[r.places[int(row[col["keyframe"]])]]
            theirs = other.drive.poses[other.places[int(row[col["other_keyframe"]])]]
            truth = compose(inverse(mine), theirs)  # the other base in this base: frames do not matter
            pose = row[col["x"]:col["qw"] + 1]
            rot = rotation_angle_deg(quat_to_matrix(pose[3:]).T @ quat_to_matrix(truth[3:]))
            assert np.linalg.norm(np.subtract(pose[:3], truth[:3])) < 0.08 and rot < 0.8, (r.name, row[:6])
            cov = np.array(row[col["cov00"]:col["cov55"] + 1]).reshape(6, 6)
            assert np.allclose(cov, cov.T, atol=1e-12) and (np.diag(cov) > 0).all()
            checked += 1
    assert checked >= 4 and stats.sent_bytes["descriptors"] > 0
    assert not any(int(row[col["other_robot_id"]]) == 2 for row in robots["robot_c"].rows)  # b left first
