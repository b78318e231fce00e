"""Localizer node: camera images in; place matches, pose and loop closures out.

Subscriptions (relative, remappable): ``<camera>`` (sensor_msgs/Image) and
``<camera>/compressed`` (sensor_msgs/CompressedImage) for each of ``camera_topics``.
Publications: ``vpr/pose``, ``vpr/matches``, ``vpr/match_table``, ``vpr/loop_closures``,
``vpr/loop_closure_table``, ``vpr/map_keyframes`` (transient local), ``diagnostics``.
Services: ``vpr/reload_map`` and ``vpr/save_map`` (std_srvs/Trigger).

Inference runs on one worker thread; only the newest frame per camera is kept.
A bad message is logged and counted; the node keeps running.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseArray, PoseStamped, PoseWithCovarianceStamped
from nav_msgs.msg import Path
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import Trigger
from visualization_msgs.msg import MarkerArray

from vpr_ros.config import LOCALIZER_SECTIONS, LocalizerConfig, ModelConfig
from vpr_ros.errors import VprError
from vpr_ros.frame_slots import LatestFrameSlots
from vpr_ros.localization import LocalizationResult, Localizer
from vpr_ros.loop_closure import STATUS_CODES
from vpr_ros.mapping.map_store import ModelIdentity, VprMap
from vpr_ros.ros.node_main import run_node
from vpr_ros.debug_view import keyframe_image, side_by_side
from vpr_ros.ros.conversions import image_to_rgb, pose_msg, rgb_to_image, sec_to_stamp, stamp_to_sec, table
from vpr_ros.ros.markers import keyframe_markers, match_markers
from vpr_ros.ros.params import declare_config
from vpr_ros.runtime.base import DescriptorBackend
from vpr_ros.runtime.factory import open_backend

MATCH_COLUMNS = ("t_query", "t_db", "db_id", "rank", "score", "verified",
                 "x", "y", "z", "qx", "qy", "qz", "qw")
# Relative pose query->match: place recognition gives no metric offset, so identity with the
# match covariance (diagonal: x, y, z, roll, pitch, yaw) for a geometric verifier to refine.
LOOP_COLUMNS = ("t_query", "t_match", "match_id", "status", "score", "streak",
                "rel_x", "rel_y", "rel_z", "rel_qx", "rel_qy", "rel_qz", "rel_qw",
                "cov_x", "cov_y", "cov_z", "cov_roll", "cov_pitch", "cov_yaw")


def image_qos(name: str) -> QoSProfile:
    """'sensor_data' (best effort, depth 5) or 'reliable' (depth 10)."""
    if name == "sensor_data":
        return qos_profile_sensor_data
    return QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


class Counters:
    """Frame statistics for /diagnostics (thread-safe enough: single writers per field)."""

    def __init__(self) -> None:
        self.processed = 0
        self.errors = 0
        self.last_error = ""
        self.latency_ms: deque[float] = deque(maxlen=100)   # receive -> published
        self.inference_ms: deque[float] = deque(maxlen=100)
        self.loop_closures = 0
        self.debug_images = 0


class LocalizerNode(Node):
    """ROS wrapper around :class:`vpr_ros.localization.Localizer`."""

    def __init__(self, backend: DescriptorBackend | None = None, **kwargs: Any) -> None:
        super().__init__("localizer", **kwargs)
        cfgs = declare_config(self, LOCALIZER_SECTIONS)
        self.cfg: LocalizerConfig = cfgs[""]
        self.model_cfg: ModelConfig = cfgs["model"]
        self.counters = Counters()
        self.slots = LatestFrameSlots()
        self.localizer: Localizer | None = None
        self._status = (DiagnosticStatus.WARN, "starting")

        self.pub_pose = self.create_publisher(PoseWithCovarianceStamped, "vpr/pose", 10)
        self.pub_matches = self.create_publisher(PoseArray, "vpr/matches", 10)
        self.pub_table = self.create_publisher(Float64MultiArray, "vpr/match_table", 10)
        self.pub_loops = self.create_publisher(Float64MultiArray, "vpr/loop_closures", 10)
        self.pub_loop_table = self.create_publisher(Float64MultiArray, "vpr/loop_closure_table", 10)
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                             reliability=ReliabilityPolicy.RELIABLE)
        self.pub_keyframes = self.create_publisher(Path, "vpr/map_keyframes", latched)
        self.pub_diag = self.create_publisher(DiagnosticArray, "diagnostics", 10)
        self.pub_markers = self.create_publisher(MarkerArray, "vpr/markers", 10)
        self.pub_debug = self.create_publisher(Image, "vpr/debug_image", 2)

        self.backend = backend or open_backend(self.cfg.backend, self.model_cfg, self.cfg.device,
                                               self.cfg.engine_cache_dir or None)
        self.get_logger().info(f"model {self.backend.model_id} on backend '{self.backend.name}' "
                               f"(weights: {self.backend.weights_source})")
        if self.backend.weights_source.startswith("random"):
            self.get_logger().warning("running with RANDOM weights: matches are meaningless for real use; "
                                   "set model.weights (see README, 'Pretrained weights')")
        self.load_map()

        qos = image_qos(self.cfg.qos)
        for topic in self.cfg.camera_topics:
            self.create_subscription(Image, topic, lambda m, c=topic: self._on_image(c, m), qos)
            self.create_subscription(CompressedImage, f"{topic}/compressed",
                                     lambda m, c=topic: self._on_image(c, m), qos)
        self.create_service(Trigger, "vpr/reload_map", self._on_reload)
        self.create_service(Trigger, "vpr/save_map", self._on_save)
        self._rate_window: deque[tuple[float, int, int, int]] = deque(maxlen=30)
        self.create_timer(self.cfg.diagnostics_period, self._publish_diagnostics)
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._work, name="vpr-inference", daemon=True)
        self._worker.start()
        self.get_logger().info(f"listening on {', '.join(self.resolve_topic_name(t) for t in self.cfg.camera_topics)}")

    # ------------------------------------------------------------------ map
    def load_map(self) -> bool:
        """(Re)load ``map_dir``; on failure log, set an ERROR diagnostic and keep running."""
        if not self.cfg.map_dir:
            self._set_status(DiagnosticStatus.ERROR, "no map: set parameter map_dir")
            return False
        try:
            vmap = VprMap.load(self.cfg.map_dir, expect=ModelIdentity.of_backend(self.backend))
            if self.localizer is None:
                self.localizer = Localizer(self.backend, vmap, self.cfg)
            else:
                self.localizer.set_map(vmap)
        except VprError as exc:
            self._set_status(DiagnosticStatus.ERROR, f"map not loaded: {exc}")
            return False
        self._publish_keyframes(vmap)
        self._set_status(DiagnosticStatus.OK, f"map with {len(vmap)} keyframes loaded")
        return True

    def _on_reload(self, _req: Trigger.Request, resp: Trigger.Response) -> Trigger.Response:
        resp.success = self.load_map()
        resp.message = self._status[1]
        return resp

    def _on_save(self, _req: Trigger.Request, resp: Trigger.Response) -> Trigger.Response:
        """Write the loaded map back to map_dir (atomically; a new generation)."""
        if self.localizer is None:
            resp.success, resp.message = False, "no map loaded"
            return resp
        try:
            path = self.localizer.map.save(self.cfg.map_dir)
            resp.success, resp.message = True, f"saved {len(self.localizer.map)} keyframes to {path}"
        except VprError as exc:
            resp.success, resp.message = False, str(exc)
        return resp

    def _publish_keyframes(self, vmap: VprMap) -> None:
        path = Path()
        path.header.frame_id = self.cfg.map_frame
        path.header.stamp = self.get_clock().now().to_msg()
        for kf in vmap.keyframes:
            ps = PoseStamped()
            ps.header.frame_id = self.cfg.map_frame
            ps.header.stamp = sec_to_stamp(kf.stamp)
            ps.pose = pose_msg(kf.pose)
            path.poses.append(ps)
        self.pub_keyframes.publish(path)
        self.pub_markers.publish(keyframe_markers(vmap, self.cfg.map_frame, path.header.stamp))

    # ------------------------------------------------------------------ input
    def _on_image(self, camera: str, msg: Image | CompressedImage) -> None:
        self.slots.put(camera, (msg, time.monotonic()))

    def _work(self) -> None:
        while not self._stop.is_set():
            item = self.slots.take(timeout=0.2)
            if item is None:
                continue
            camera, (msg, received) = item
            try:
                self._process(camera, msg, received)
            except VprError as exc:
                self._error(f"frame from '{camera}' skipped: {exc}")
            except Exception as exc:  # noqa: BLE001 - one bad frame must not kill the node
                self._error(f"frame from '{camera}' failed unexpectedly: {type(exc).__name__}: {exc}")

    def _process(self, camera: str, msg: Image | CompressedImage, received: float) -> None:
        if self.localizer is None:
            raise VprError("no map loaded yet (see the ERROR on diagnostics)")
        rgb = image_to_rgb(msg)
        stamp = stamp_to_sec(msg.header.stamp)
        result = self.localizer.localize(rgb, stamp, camera)
        self._publish(result, msg.header.stamp)
        if self.pub_markers.get_subscription_count() > 0:
            self.pub_markers.publish(match_markers(result, self.cfg.map_frame, msg.header.stamp))
        if self.pub_debug.get_subscription_count() > 0:  # only built when someone looks
            top = result.matches[0]
            view = side_by_side(rgb, keyframe_image(top.keyframe.image_ref), top.db_id, top.score, result.accepted)
            self.pub_debug.publish(rgb_to_image(view, stamp, self.cfg.map_frame))
            self.counters.debug_images += 1
        self.counters.processed += 1
        self.counters.inference_ms.append(result.timings_ms["inference"])
        self.counters.latency_ms.append((time.monotonic() - received) * 1e3)

    def _error(self, text: str) -> None:
        self.counters.errors += 1
        self.counters.last_error = text
        self.get_logger().error(text, throttle_duration_sec=1.0)

    # ------------------------------------------------------------------ output
    def _publish(self, r: LocalizationResult, stamp: Any) -> None:
        frame = self.cfg.map_frame
        rows = [(r.stamp, m.keyframe.stamp, m.db_id, m.rank, m.score,
                 float(m.rank == 0 and r.loop is not None and r.loop.publish), *m.keyframe.pose)
                for m in r.matches]
        self.pub_table.publish(table(MATCH_COLUMNS, rows))

        arr = PoseArray()
        arr.header.stamp, arr.header.frame_id = stamp, frame
        arr.poses = [pose_msg(m.keyframe.pose) for m in r.matches]
        self.pub_matches.publish(arr)

        if r.pose is not None:
            msg = PoseWithCovarianceStamped()
            msg.header.stamp, msg.header.frame_id = stamp, frame
            msg.pose.pose = pose_msg(r.pose)
            msg.pose.covariance = r.covariance
            self.pub_pose.publish(msg)

        if r.loop is not None:
            lp = r.loop
            cov = r.covariance
            self.pub_loop_table.publish(table(LOOP_COLUMNS, [(
                lp.t_query, lp.t_match, lp.db_id, STATUS_CODES[lp.status], lp.score, lp.streak,
                0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, *(cov[i * 7] for i in range(6)))]))
            if lp.publish:
                self.pub_loops.publish(Float64MultiArray(data=[lp.t_query, lp.t_match]))
                self.counters.loop_closures += 1
                self.get_logger().info(f"loop closure: t_query={lp.t_query:.3f} t_match={lp.t_match:.3f} "
                                       f"(keyframe {lp.db_id}, score {lp.score:.3f})")

    def _set_status(self, level: bytes, text: str) -> None:
        self._status = (level, text)
        log = self.get_logger().error if level == DiagnosticStatus.ERROR else self.get_logger().info
        log(text)

    def _publish_diagnostics(self) -> None:
        c, s = self.counters, self.slots
        now = time.monotonic()
        self._rate_window.append((now, s.received, c.processed, s.dropped))
        t0, r0, p0, d0 = self._rate_window[0]
        dt = max(now - t0, 1e-9)
        level, text = self._status
        if level == DiagnosticStatus.OK and c.errors and c.last_error:
            level, text = DiagnosticStatus.WARN, f"{c.errors} frame(s) failed; last: {c.last_error}"
        st = DiagnosticStatus(level=level, name=f"{self.get_name()}: localizer", message=text,
                              hardware_id=self.backend.model_id)
        mean = (lambda q: sum(q) / len(q) if q else 0.0)
        values = {
            "backend": self.backend.name, "model_id": self.backend.model_id,
            "weights": self.backend.weights_source,
            "map_dir": self.cfg.map_dir,
            "map_keyframes": len(self.localizer.map) if self.localizer else 0,
            "frames_received": s.received, "frames_processed": c.processed,
            "frames_dropped": s.dropped, "frames_failed": c.errors,
            "input_rate_hz": f"{(s.received - r0) / dt:.2f}",
            "processed_rate_hz": f"{(c.processed - p0) / dt:.2f}",
            "dropped_rate_hz": f"{(s.dropped - d0) / dt:.2f}",
            "inference_ms_mean": f"{mean(c.inference_ms):.2f}",
            "latency_ms_mean": f"{mean(c.latency_ms):.2f}",
            "loop_closures": c.loop_closures, "last_error": c.last_error,
        }
        st.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        arr = DiagnosticArray(status=[st])
        arr.header.stamp = self.get_clock().now().to_msg()
        self.pub_diag.publish(arr)

    def destroy_node(self) -> None:
        if hasattr(self, "_worker"):  # absent if the constructor failed
            self._stop.set()
            self.slots.close()
            self._worker.join(timeout=10.0)
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Console script ``localizer`` (``ros2 run vpr_ros localizer``)."""
    return run_node(LocalizerNode, "localizer", args)


if __name__ == "__main__":
    raise SystemExit(main())
