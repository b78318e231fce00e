"""A small rclpy client that plays query images to a localizer and records its answers.

Used by the demo and the tests: it publishes ``sensor_msgs/Image`` frames on a topic,
waits for the ``vpr/match_table`` row of each stamp, and collects loop closures and
diagnostics, over real ROS 2 topics.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseArray, PoseWithCovarianceStamped
from nav_msgs.msg import Path
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Float64MultiArray

from vpr_ros.ros.conversions import read_table, rgb_to_image, stamp_to_sec


@dataclass
class PlayerLog:
    """Everything received from the localizer, keyed by query stamp where possible."""

    tables: dict[float, list[dict[str, float]]] = field(default_factory=dict)
    latency_s: dict[float, float] = field(default_factory=dict)
    poses: dict[float, PoseWithCovarianceStamped] = field(default_factory=dict)
    matches: dict[float, PoseArray] = field(default_factory=dict)
    loop_closures: list[tuple[float, float]] = field(default_factory=list)
    loop_table: list[dict[str, float]] = field(default_factory=list)
    diagnostics: list[DiagnosticArray] = field(default_factory=list)
    keyframes: Path | None = None


class QueryPlayer(Node):
    """Publishes frames on ``image_topic`` and listens to the localizer's outputs."""

    def __init__(self, image_topic: str = "image", vpr_ns: str = "vpr", name: str = "vpr_query_player") -> None:
        super().__init__(name)
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.pub = self.create_publisher(Image, image_topic, qos)
        self.pub_compressed = self.create_publisher(CompressedImage, f"{image_topic}/compressed", qos)
        self.log = PlayerLog()
        self.table_listeners: list = []  # extra callables receiving every vpr/match_table message
        self._sent: dict[float, float] = {}
        self.create_subscription(Float64MultiArray, f"{vpr_ns}/match_table", self._on_table, 50)
        self.create_subscription(Float64MultiArray, f"{vpr_ns}/loop_closures",
                                 lambda m: self.log.loop_closures.append((m.data[0], m.data[1])), 50)
        self.create_subscription(Float64MultiArray, f"{vpr_ns}/loop_closure_table",
                                 lambda m: self.log.loop_table.extend(read_table(m)), 50)
        self.create_subscription(PoseWithCovarianceStamped, f"{vpr_ns}/pose",
                                 lambda m: self.log.poses.__setitem__(stamp_to_sec(m.header.stamp), m), 50)
        self.create_subscription(PoseArray, f"{vpr_ns}/matches",
                                 lambda m: self.log.matches.__setitem__(stamp_to_sec(m.header.stamp), m), 50)
        self.create_subscription(DiagnosticArray, "/diagnostics", self.log.diagnostics.append, 50)
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                             reliability=ReliabilityPolicy.RELIABLE)
        self.create_subscription(Path, f"{vpr_ns}/map_keyframes",
                                 lambda m: setattr(self.log, "keyframes", m), latched)

    def _on_table(self, msg: Float64MultiArray) -> None:
        for listener in self.table_listeners:
            listener(msg)
        rows = read_table(msg)
        if rows:
            t = round(rows[0]["t_query"], 6)
            self.log.tables[t] = rows
            if t in self._sent:
                self.log.latency_s[t] = time.monotonic() - self._sent[t]

    def spin_until(self, cond, timeout: float) -> bool:  # type: ignore[no-untyped-def]
        """Spin this node until ``cond()`` is true or ``timeout`` seconds pass."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if cond():
                return True
            rclpy.spin_once(self, timeout_sec=0.05)
        return bool(cond())

    def wait_for_localizer(self, timeout: float = 30.0) -> bool:
        """Wait until the localizer subscribes to our images and publishes its table."""
        return self.spin_until(lambda: self.pub.get_subscription_count() > 0 and
                               self.count_publishers(self._table_topic()) > 0, timeout)

    def _table_topic(self) -> str:
        return next(s.topic_name for s in self.subscriptions if s.topic_name.endswith("match_table"))

    def send(self, rgb: np.ndarray, stamp: float, frame_id: str = "camera") -> None:
        """Publish one frame as sensor_msgs/Image (rgb8)."""
        self._sent[round(stamp, 6)] = time.monotonic()
        self.pub.publish(rgb_to_image(rgb, stamp, frame_id))

    def send_raw(self, msg: Image | CompressedImage) -> None:
        """Publish a prepared (possibly malformed) message."""
        (self.pub_compressed if isinstance(msg, CompressedImage) else self.pub).publish(msg)

    def play(self, images: Sequence[np.ndarray], stamps: Sequence[float], timeout: float = 30.0,
             progress: bool = False) -> int:
        """Send frames one at a time, each after the previous one was answered.

        Returns the number of frames answered within ``timeout`` seconds each.
        """
        answered = 0
        it = zip(images, stamps)
        if progress:
            from tqdm import tqdm

            it = tqdm(it, total=len(stamps), desc="localizing", unit="frame")
        for rgb, t in it:
            key = round(t, 6)
            self.send(rgb, t)
            if self.spin_until(lambda: key in self.log.tables, timeout):
                answered += 1
        self.spin_until(lambda: False, 0.3)  # collect trailing loop-closure messages
        return answered


def camera_info_msg(intr) -> CameraInfo:  # type: ignore[no-untyped-def]
    """sensor_msgs/CameraInfo of a pinhole camera (CameraIntrinsics)."""
    msg = CameraInfo(width=int(intr.width), height=int(intr.height), distortion_model="plumb_bob")
    msg.k = [float(intr.fx), 0.0, float(intr.cx), 0.0, float(intr.fy), float(intr.cy), 0.0, 0.0, 1.0]
    msg.d = [0.0] * 5
    return msg


def play_session(image_topic: str, images: Sequence[np.ndarray], stamps: Sequence[float],
                 frame_timeout: float, startup_timeout: float = 120.0,
                 camera_info: object | None = None) -> tuple[PlayerLog | None, int]:
    """Init rclpy, wait for a localizer on ``image_topic``, publish ``camera_info`` (the camera's
    CameraIntrinsics, on the sibling 'camera_info' topic) if given, play the frames, shut down.

    Returns (everything received, frames answered), or (None, 0) if no localizer came up.
    """
    rclpy.init()
    try:
        player = QueryPlayer(image_topic)
        if not player.wait_for_localizer(timeout=startup_timeout):
            return None, 0
        if camera_info is not None:
            head = image_topic.rsplit("/", 1)[0] if "/" in image_topic else ""
            qos = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL, reliability=ReliabilityPolicy.RELIABLE)
            pub = player.create_publisher(CameraInfo, f"{head}/camera_info" if head else "camera_info", qos)
            player.spin_until(lambda: pub.get_subscription_count() > 0, 10.0)
            pub.publish(camera_info_msg(camera_info))
            player.spin_until(lambda: False, 0.3)
        player.spin_until(lambda: player.log.keyframes is not None, 5.0)
        answered = player.play(images, stamps, timeout=frame_timeout, progress=True)

        def counted_all() -> bool:  # a diagnostics message published after the last answered frame
            d = player.log.diagnostics
            vals = {kv.key: kv.value for kv in d[-1].status[0].values} if d else {}
            return int(vals.get("frames_processed", -1)) >= answered
        player.spin_until(counted_all, 5.0)
        log = player.log
        player.destroy_node()
        return log, answered
    finally:
        rclpy.try_shutdown()
