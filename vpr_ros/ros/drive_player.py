"""Plays a drive with depth to a map builder node (images, aligned depth, CameraInfo, odometry)
at a fixed rate over real ROS 2 topics and collects what it publishes about loop closures: the
ROS side of ``vpr_ros_demo --slam`` (the demo's core never imports rclpy)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from nav_msgs.msg import Odometry
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Float64MultiArray

from vpr_ros.ros.conversions import depth_to_image, pose_msg, read_table, rgb_to_image, sec_to_stamp
from vpr_ros.ros.player import camera_info_msg


@dataclass
class DriveLog:
    """What the node published: ``[t_cur, t_pre]`` pairs (with the frames sent when each came; -1
    once the whole drive was sent, while the node still works through its backlog),
    loop_closure_table rows by query stamp, and its diagnostics values."""

    pairs: list[tuple[float, float, int]] = field(default_factory=list)
    rows: dict[float, dict[str, float]] = field(default_factory=dict)
    diagnostics: list[dict[str, str]] = field(default_factory=list)
    came_up: bool = False


def play_drive(images: Sequence[np.ndarray], depths: Sequence[np.ndarray], stamps: Sequence[float],
               poses: Sequence[Sequence[float]], intrinsics: Any, camera_topic: str, depth_topic: str,
               rate: float, finish_timeout: float, after_frame: Callable[[int, DriveLog], None]) -> DriveLog:
    """Init rclpy, wait for the map builder, publish one frame per 1/``rate`` s (odometry in
    'odom', depth, then the image), call ``after_frame(k, log)`` after each, wait (at most
    ``finish_timeout`` s) until every frame is encoded, shut down."""
    log = DriveLog()
    rclpy.init()
    try:
        n = rclpy.create_node("vpr_drive_player")
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        pub_img = n.create_publisher(Image, camera_topic, reliable)
        pub_depth = n.create_publisher(Image, depth_topic, reliable)
        pub_odom = n.create_publisher(Odometry, "odom", reliable)
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL, reliability=ReliabilityPolicy.RELIABLE)
        head = camera_topic.rsplit("/", 1)[0] + "/" if "/" in camera_topic else ""
        pub_info = n.create_publisher(CameraInfo, f"{head}camera_info", latched)
        sent = [0]
        n.create_subscription(Float64MultiArray, "vpr/loop_closures",
                              lambda m: log.pairs.append((m.data[0], m.data[1], sent[0])), 50)
        n.create_subscription(Float64MultiArray, "vpr/loop_closure_table", lambda m: log.rows.update(
            (round(r["t_query"], 6), r) for r in read_table(m)), 50)
        n.create_subscription(DiagnosticArray, "/diagnostics", lambda m: log.diagnostics.extend(
            {kv.key: kv.value for kv in st.values} for st in m.status if st.name.endswith("map_builder")), 20)

        def spin_for(seconds: float, until: Callable[[], Any] | None = None) -> bool:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                rclpy.spin_once(n, timeout_sec=0.02)
                if until is not None and until():
                    return True
            return until is None or bool(until())

        log.came_up = spin_for(120.0, lambda: pub_img.get_subscription_count() and pub_odom.get_subscription_count()
                               and log.diagnostics)
        if not log.came_up:
            return log
        pub_info.publish(camera_info_msg(intrinsics))
        spin_for(0.5)
        for k, (img, depth, t, pose) in enumerate(zip(images, depths, stamps, poses)):
            od = Odometry()
            od.header.stamp, od.header.frame_id = sec_to_stamp(t), "odom"
            od.pose.pose = pose_msg(pose)
            pub_odom.publish(od)
            pub_depth.publish(depth_to_image(depth, t))
            spin_for(0.05)
            pub_img.publish(rgb_to_image(img, t))
            sent[0] = k + 1
            spin_for(1.0 / rate)
            after_frame(k, log)
        sent[0] = -1  # what arrives from here came after the drive
        spin_for(finish_timeout, lambda: log.diagnostics and int(log.diagnostics[-1].get("keyframes", 0)) >= len(images)
                 and int(log.diagnostics[-1].get("pending", 1)) == 0)
        spin_for(1.0)
        n.destroy_node()
        return log
    finally:
        rclpy.try_shutdown()
