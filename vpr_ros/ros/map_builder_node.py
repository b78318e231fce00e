"""map_builder node: images + poses in, a map on disk out.

Subscriptions (relative): ``<camera>`` / ``<camera>/compressed`` for each of
``camera_topics``, and ``pose_topic``: nav_msgs/Odometry (``pose_source: odometry``) or
sensor_msgs/NavSatFix (``navsatfix``: positions east/north/up of the first fix, GPS kept on
the keyframes). Each image is paired with the pose nearest in time (within ``max_pose_age``);
keyframes are chosen by the shared :class:`~vpr_ros.mapping.keyframes.KeyframeSelector`
(motion, time, optionally appearance novelty) and encoded on a worker thread. The map is
saved periodically, on ``vpr/save_map`` (std_srvs/Trigger) and on shutdown.
"""
from __future__ import annotations

import bisect
import queue
import threading
import time
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from nav_msgs.msg import Odometry
from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, Image, NavSatFix, NavSatStatus
from std_srvs.srv import Trigger

from vpr_ros.config import MAP_BUILDER_SECTIONS, KeyframeConfig, MapBuilderConfig, ModelConfig
from vpr_ros.errors import ConfigError, MapError, VprError
from vpr_ros.geometry import enu_from_geodetic
from vpr_ros.mapping.builder import MapBuilder
from vpr_ros.mapping.map_store import Keyframe, VprMap
from vpr_ros.ros.conversions import image_to_rgb, pose_tuple, stamp_to_sec
from vpr_ros.ros.localizer_node import image_qos
from vpr_ros.ros.node_main import run_node
from vpr_ros.ros.params import declare_config
from vpr_ros.runtime.base import DescriptorBackend
from vpr_ros.runtime.factory import open_backend
from vpr_ros.runtime.preprocess import preprocess_batch

#: Odometry messages kept for pairing (about 10 s at 50 Hz).
POSE_HISTORY = 500
#: Keyframes waiting for the encoder before new ones are dropped.
MAX_PENDING = 64


class MapBuilderNode(Node):
    """ROS wrapper around :class:`vpr_ros.mapping.builder.MapBuilder`."""

    def __init__(self, backend: DescriptorBackend | None = None, **kwargs: Any) -> None:
        super().__init__("map_builder", **kwargs)
        cfgs = declare_config(self, MAP_BUILDER_SECTIONS)
        self.cfg: MapBuilderConfig = cfgs[""]
        self.model_cfg: ModelConfig = cfgs["model"]
        self.kf_cfg: KeyframeConfig = cfgs["keyframes"]
        if not self.cfg.map_dir:
            raise MapError("parameter map_dir is empty: say where the map is written")
        self.backend = backend or open_backend(self.cfg.backend, self.model_cfg, self.cfg.device,
                                               self.cfg.engine_cache_dir or None)
        base = None
        try:
            base = VprMap.load(self.cfg.map_dir)
            self.get_logger().info(f"extending existing map in {self.cfg.map_dir} ({len(base)} keyframes)")
        except MapError:
            pass
        self.builder = MapBuilder(self.backend, self.kf_cfg, map_frame=self.cfg.map_frame,
                                  source=f"map_builder node ({', '.join(self.cfg.camera_topics)})", base=base,
                                  index=cfgs["index"])
        self.get_logger().info(f"model {self.backend.model_id} (weights: {self.backend.weights_source})")
        self._poses: list[tuple[float, tuple, tuple | None]] = []  # (stamp, pose, gps)
        self._gps_origin: tuple[float, float, float] | None = None
        self._lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue(maxsize=MAX_PENDING)
        self.images = self.keyframes = self.skipped_no_pose = self.dropped = self.errors = 0
        self.last_error = ""
        self._dirty = False

        qos = image_qos(self.cfg.qos)
        for topic in self.cfg.camera_topics:
            self.create_subscription(Image, topic, lambda m, c=topic: self._on_image(c, m), qos)
            self.create_subscription(CompressedImage, f"{topic}/compressed",
                                     lambda m, c=topic: self._on_image(c, m), qos)
        self._tf = None
        if self.cfg.pose_source == "tf":
            self._tf = self._tf_buffer()
        elif self.cfg.pose_source == "navsatfix":
            self.create_subscription(NavSatFix, self.cfg.pose_topic, self._on_fix, 50)
        else:
            self.create_subscription(Odometry, self.cfg.pose_topic, self._on_odom, 50)
        self.create_service(Trigger, "vpr/save_map", self._on_save)
        self.pub_diag = self.create_publisher(DiagnosticArray, "diagnostics", 10)
        self.create_timer(1.0, self._publish_diagnostics)
        if self.cfg.autosave_period > 0:
            self.create_timer(self.cfg.autosave_period, self._autosave)
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._work, name="vpr-map-encoder", daemon=True)
        self._worker.start()

    def _store_pose(self, t: float, pose: tuple, gps: tuple | None) -> None:
        with self._lock:
            bisect.insort(self._poses, (t, pose, gps), key=lambda p: p[0])
            del self._poses[:-POSE_HISTORY]

    def _on_odom(self, msg: Odometry) -> None:
        self._store_pose(stamp_to_sec(msg.header.stamp), pose_tuple(msg.pose.pose), None)

    def _on_fix(self, msg: NavSatFix) -> None:
        if msg.status.status < NavSatStatus.STATUS_FIX:
            self.get_logger().warning("NavSatFix without a fix ignored", throttle_duration_sec=5.0)
            return
        gps = (msg.latitude, msg.longitude, msg.altitude)
        if self._gps_origin is None:
            self._gps_origin = gps
            self.get_logger().info(f"GPS origin of the map frame: lat {gps[0]:.7f}, lon {gps[1]:.7f}, alt {gps[2]:.1f}")
        e, n, u = enu_from_geodetic(*gps, self._gps_origin)
        self._store_pose(stamp_to_sec(msg.header.stamp), (e, n, u, 0.0, 0.0, 0.0, 1.0), gps)

    def _tf_buffer(self) -> object:
        """A tf2 buffer + listener (ROS 2 installations; tf2_ros has no pip wheel)."""
        try:
            from tf2_ros import Buffer, TransformListener  # type: ignore[import-not-found]
        except ImportError:
            raise ConfigError("pose_source 'tf' needs tf2_ros (a ROS 2 installation; it is not available "
                              "from pip): use 'odometry' or 'navsatfix' here") from None
        buffer = Buffer()
        self._tf_listener = TransformListener(buffer, self)
        return buffer

    def _tf_pose(self, t: float) -> tuple[tuple, None] | None:
        from rclpy.duration import Duration
        from rclpy.time import Time

        try:
            tr = self._tf.lookup_transform(self.cfg.map_frame, self.cfg.base_frame,  # type: ignore[attr-defined]
                                           Time(nanoseconds=int(t * 1e9)), timeout=Duration(seconds=0.05))
        except Exception:  # noqa: BLE001 - tf2 raises several lookup/extrapolation exception types
            return None
        p, q = tr.transform.translation, tr.transform.rotation
        return (p.x, p.y, p.z, q.x, q.y, q.z, q.w), None

    def _pose_at(self, t: float) -> tuple[tuple, tuple | None] | None:
        if self._tf is not None:
            return self._tf_pose(t)
        with self._lock:
            if not self._poses:
                return None
            i = bisect.bisect_left(self._poses, t, key=lambda p: p[0])
            near = [self._poses[j] for j in (i - 1, i) if 0 <= j < len(self._poses)]
        best = min(near, key=lambda p: abs(p[0] - t))
        return (best[1], best[2]) if abs(best[0] - t) <= self.cfg.max_pose_age else None

    def _on_image(self, camera: str, msg: Image | CompressedImage) -> None:
        self.images += 1
        t = stamp_to_sec(msg.header.stamp)
        found = self._pose_at(t)
        if found is None:
            self.skipped_no_pose += 1
            source = "transform" if self._tf is not None else "pose"
            self.get_logger().warning(f"image on '{camera}' at {t:.3f}: no {source} within "
                                      f"{self.cfg.max_pose_age}s ({self.cfg.pose_source}); skipped",
                                      throttle_duration_sec=2.0)
            return
        pose, gps = found
        try:
            kf = Keyframe(stamp=t, pose=pose, camera=camera, frame_id=msg.header.frame_id, gps=gps)
        except VprError as exc:
            self._error(str(exc))
            return
        if self.builder.selector.offer(t, pose):
            keyframe = True
        elif self.kf_cfg.novelty_threshold > 0 and self._queue.qsize() == 0:
            keyframe = False  # a candidate for the appearance trigger, checked when the worker is idle
        else:
            return
        try:
            self._queue.put_nowait((camera, msg, kf, keyframe))
        except queue.Full:
            self.dropped += 1

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                camera, msg, kf, keyframe = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                rgb = image_to_rgb(msg)
                desc = self.backend.infer(preprocess_batch([rgb], self.backend.input_size))
                with self._lock:
                    added = self.builder.add_encoded(desc, [kf]) if keyframe else self.builder.consider_novel(desc, kf)
                    self._dirty = self._dirty or added is not None
                self.keyframes += added is not None
                if added is not None and self.keyframes % 10 == 0:
                    self.get_logger().info(f"{len(self.builder.map)} keyframes; last at x={kf.pose[0]:.1f} "
                                           f"y={kf.pose[1]:.1f} ({self.images} images received)")
            except VprError as exc:
                self._error(f"frame from '{camera}' skipped: {exc}")
            except Exception as exc:  # noqa: BLE001 - keep building on one bad frame
                self._error(f"frame from '{camera}' failed: {type(exc).__name__}: {exc}")
            finally:
                self._queue.task_done()

    def _error(self, text: str) -> None:
        self.errors += 1
        self.last_error = text
        self.get_logger().error(text, throttle_duration_sec=1.0)

    def save(self) -> str:
        """Save now; returns a status line."""
        with self._lock:
            if len(self.builder.map) == 0:
                return "map is empty; nothing saved"
            path = self.builder.save(self.cfg.map_dir)
            self._dirty = False
        text = f"saved {len(self.builder.map)} keyframes to {path}"
        self.get_logger().info(text)
        return text

    def _autosave(self) -> None:
        if self._dirty:
            self.save()

    def _on_save(self, _req: Trigger.Request, resp: Trigger.Response) -> Trigger.Response:
        try:
            resp.message = self.save()
            resp.success = True
        except VprError as exc:
            resp.success, resp.message = False, str(exc)
        return resp

    def _publish_diagnostics(self) -> None:
        level = DiagnosticStatus.WARN if self.errors or self.skipped_no_pose else DiagnosticStatus.OK
        msg = self.last_error or ("images without odometry were skipped" if self.skipped_no_pose else
                                  f"{len(self.builder.map)} keyframes")
        st = DiagnosticStatus(level=level, name=f"{self.get_name()}: map_builder", message=msg,
                              hardware_id=self.backend.model_id)
        values = {"map_dir": self.cfg.map_dir, "keyframes": len(self.builder.map),
                  "images_received": self.images, "images_without_pose": self.skipped_no_pose,
                  "keyframes_dropped": self.dropped, "errors": self.errors,
                  "pending": self._queue.qsize(), "model_id": self.backend.model_id}
        st.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        arr = DiagnosticArray(status=[st])
        arr.header.stamp = self.get_clock().now().to_msg()
        self.pub_diag.publish(arr)

    def drain(self, timeout: float = 30.0) -> None:
        """Wait until queued keyframes are encoded (used before the final save)."""
        end = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < end:
            time.sleep(0.05)


    def destroy_node(self) -> None:
        if hasattr(self, "_worker"):  # absent if the constructor failed
            self._stop.set()
            self._worker.join(timeout=10.0)
        super().destroy_node()


def _finish(node: MapBuilderNode) -> None:
    node.drain(timeout=10.0)
    node.save()


def main(args: list[str] | None = None) -> int:
    """Console script ``map_builder`` (``ros2 run vpr_ros map_builder``); saves the map on exit."""
    return run_node(MapBuilderNode, "map_builder", args, before_destroy=_finish)  # type: ignore[arg-type]


if __name__ == "__main__":
    raise SystemExit(main())

