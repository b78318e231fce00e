"""The fleet node (``ros2 run vpr_ros fleet``): one per robot, beside its map builder.

It follows the robot's map as a reader, shares compact codes of its keyframes with the fleet,
asks the other robots for the local features of candidates only, answers their requests, all
within ``bandwidth_bytes_per_s``, verifies geometrically and publishes inter-robot closures.

Topics (standard messages only; the three fleet topics are absolute, so robots in different
namespaces share them; remap them for a bridge):

* ``/fleet/descriptors``, ``/fleet/requests``, ``/fleet/features`` (std_msgs/UInt8MultiArray):
  the fleet's packets (vpr_ros/fleet/codec.py, features_wire.py), published and subscribed;
* ``fleet/inter_robot_closures`` (std_msgs/Float64MultiArray, a table whose column names are in
  the layout's labels, :data:`CLOSURE_COLUMNS`): one row per verified closure;
* ``/diagnostics``: shared and received keyframes, candidates, closures, bytes sent by kind.
"""
from __future__ import annotations

import time
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Float64MultiArray, UInt8MultiArray

from vpr_ros.config import FLEET_SECTIONS, FleetConfig
from vpr_ros.errors import ConfigError, MapError, VprError
from vpr_ros.fleet.alignment import describe_frames
from vpr_ros.fleet.closures import InterRobotClosure
from vpr_ros.fleet.codec import FleetCodec, Robot
from vpr_ros.fleet.map_follower import MapFollower
from vpr_ros.fleet.peer import DESCRIPTORS, FEATURES, REQUESTS, FleetPeer
from vpr_ros.ros.conversions import table
from vpr_ros.ros.node_base import VprNodeMixin
from vpr_ros.ros.params import LiveParameters, declare_config
from vpr_ros.verification.verifier import Verifier

SECTIONS = FLEET_SECTIONS
#: one row per closure: this robot's keyframe (id, stamp s), the other robot's, the other keyframe's
#: camera pose in this keyframe's camera frame (m, quaternion), its 6x6 covariance row-major over
#: (x, y, z, rx, ry, rz), PnP inliers and the codes' cosine
CLOSURE_COLUMNS = ("robot_id", "keyframe", "stamp", "other_robot_id", "other_keyframe", "other_stamp",
                   "x", "y", "z", "qx", "qy", "qz", "qw", *(f"cov{i}{j}" for i in range(6) for j in range(6)),
                   "inliers", "score")
TOPICS = {DESCRIPTORS: "/fleet/descriptors", REQUESTS: "/fleet/requests", FEATURES: "/fleet/features"}
SEND_PERIOD = 0.1  # s between two looks at what the budget allows


def closure_row(c: InterRobotClosure) -> list[float]:
    """The CLOSURE_COLUMNS row of a closure."""
    return [float(c.robot.id), float(c.keyframe), c.stamp, float(c.other.id), float(c.other_keyframe),
            c.other_stamp, *c.pose, *(float(v) for v in c.covariance.reshape(-1)), float(c.inliers), c.score]


class FleetNode(VprNodeMixin, Node):
    """See the module docstring; parameters are :class:`~vpr_ros.config.FleetConfig` and
    ``verification.*``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("fleet", **kwargs)
        cfgs = declare_config(self, SECTIONS)
        self.cfg: FleetConfig = cfgs[""]
        if not self.cfg.map_dir:
            raise ConfigError("map_dir: the directory of the map this robot's map builder writes must be given")
        name = self.cfg.robot_name or self.get_namespace().strip("/").replace("/", "_") or self.get_name()
        self.robot = Robot(name, self.cfg.robot_id)
        self.verifier = Verifier(cfgs["verification"])
        self.live = LiveParameters(self, SECTIONS, cfgs, self._apply_parameters)
        self.follower = MapFollower(self.cfg.map_dir)
        self.peer: FleetPeer | None = None  # made at the first look at the map (its model)
        self.last_error = ""
        self._t0 = time.monotonic()
        reliable = QoSProfile(reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE,
                              history=HistoryPolicy.KEEP_LAST, depth=200)
        self.pubs = {kind: self.create_publisher(UInt8MultiArray, topic, reliable) for kind, topic in TOPICS.items()}
        handlers = {DESCRIPTORS: "on_descriptors", REQUESTS: "on_request", FEATURES: "on_features"}
        self.subs = [self.create_subscription(UInt8MultiArray, TOPICS[kind], self.guarded(
            lambda msg, h=handlers[kind]: self._receive(h, msg)), reliable) for kind in TOPICS]
        self.pub_closures = self.create_publisher(Float64MultiArray, "fleet/inter_robot_closures", 10)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.steady_timer(self.cfg.poll_period, self._poll)
        self.steady_timer(SEND_PERIOD, self._send)
        self.steady_timer(1.0, self._diagnostics)
        self.say("info", f"fleet: robot {self.robot}, map {self.cfg.map_dir}, budget "
                         f"{self.cfg.bandwidth_bytes_per_s:.0f} B/s (burst {self.cfg.burst_bytes} B)")

    def _apply_parameters(self, new: dict[str, Any], names: set[str]) -> None:
        """``ros2 param set`` of a live verification setting: the next verification uses it."""
        self.verifier = Verifier(new["verification"])
        if self.peer is not None:
            self.peer.verifier = self.verifier

    def _poll(self) -> None:
        try:
            kfs, vectors = self.follower.new_keyframes()
        except MapError as exc:
            if "not a map directory" in str(exc):  # the map builder has not written it yet
                self.last_error = str(exc)
                return
            raise
        if self.peer is None:
            assert self.follower.model is not None
            self.peer = FleetPeer(self.robot, FleetCodec(self.follower.model), self.cfg, self.verifier,
                                  self.follower.features)
            self.say("info", f"fleet: sharing the keyframes of model {self.follower.model.model_id}")
        if kfs:
            self.peer.add_own([kf.id for kf in kfs], [kf.stamp for kf in kfs], vectors, [kf.pose for kf in kfs])

    def _receive(self, handler: str, msg: UInt8MultiArray) -> None:
        if self.peer is None:
            return  # nothing of ours to match yet; the others share again what we need (requests)
        try:
            found = getattr(self.peer, handler)(bytes(msg.data))
        except VprError as exc:
            self.last_error = str(exc)
            self.say("warning", f"fleet: {exc}")
            return
        for c in found or []:
            self.safe_publish(self.pub_closures, table(CLOSURE_COLUMNS, [closure_row(c)]))
            sigma = float(c.covariance[0, 0] + c.covariance[1, 1] + c.covariance[2, 2]) ** 0.5
            self.say("info", f"fleet: inter-robot closure: robot {c.other} keyframe {c.other_keyframe} seen again by "
                             f"keyframe {c.keyframe} ({c.inliers} inliers, position sigma {100 * sigma:.1f} cm)")

    def _send(self) -> None:
        if self.peer is None:
            return
        for kind, data in self.peer.outgoing(time.monotonic() - self._t0):
            self.safe_publish(self.pubs[kind], UInt8MultiArray(data=data))

    def _diagnostics(self) -> None:
        p = self.peer
        values: dict[str, Any] = {"robot": str(self.robot), "map_dir": self.cfg.map_dir}
        level, message = DiagnosticStatus.OK, "sharing"
        if p is None:
            level, message = DiagnosticStatus.WARN, f"waiting for the map: {self.last_error or 'not read yet'}"
        else:
            sent = sum(p.stats.sent_bytes.values())
            values.update(keyframes_shared=p.sharer.sent_keyframes, keyframes_waiting=p.sharer.waiting,
                          keyframes_received=p.matcher.received, candidates=p.stats.candidates,
                          features_waiting=p.waiting, closures=p.stats.verified, refused=p.stats.refused,
                          bytes_sent=sent, **{f"bytes_{k}": v for k, v in p.stats.sent_bytes.items()},
                          bytes_per_shared_keyframe=round(p.stats.sent_bytes[DESCRIPTORS] /
                                                          max(1, p.sharer.sent_keyframes), 1),
                          robots_refused="; ".join(p.matcher.refused.values()), last_refusal=p.stats.last_refusal,
                          other_frames=describe_frames(p.closures[-2000:], self.robot.id))
            message = f"{p.stats.verified} inter-robot closures, {p.matcher.received} keyframes received"
        if self.last_error:
            values["last_error"] = self.last_error
        self.publish_status(self.pub_diag, "fleet", level, message, self.robot.name, values)

    def destroy_node(self) -> None:
        self.follower.close()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    from vpr_ros.ros.node_main import node_help, run_node, wants_help

    if wants_help(args):
        print(node_help("fleet", SECTIONS, "Shares this robot's keyframes with the fleet and closes loops between "
                                           "robots (docs/fleet.md)."))
        return 0
    return run_node(FleetNode, "fleet", args)


if __name__ == "__main__":
    raise SystemExit(main())
