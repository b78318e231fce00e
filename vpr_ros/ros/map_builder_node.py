"""map_builder node: images + poses in, a map on disk out.

Subscriptions (relative), one per camera of ``camera_topics`` (``transport`` raw or compressed),
and the pose source: nav_msgs/Odometry on ``pose_topic`` (``pose_source: odometry``; poses keep
the message's ``header.frame_id``), sensor_msgs/NavSatFix (``navsatfix``: metres east/north/up of
the first fix, GPS kept on the keyframes) or TF (``tf``: ``map_frame`` -> ``base_frame``).

Each image waits (up to ``max_pose_wait`` s) for a pose at or after its stamp and is paired with
the pose interpolated between its neighbours (gap <= ``max_interpolation_gap``) or, failing
that, the nearest within ``max_pose_age``; images without a pose are skipped and counted.
Keyframes are chosen by the shared :class:`~vpr_ros.mapping.keyframes.KeyframeSelector` and
encoded on a worker thread. The map is saved periodically, on ``vpr/save_map`` and at shutdown:
on SIGINT/SIGTERM what is encoded is saved first, then the queued keyframes are encoded and
saved (launch files give the node the time to do so). ``map_builder_lifecycle`` is the managed
variant.
"""
from __future__ import annotations

import queue
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from nav_msgs.msg import Odometry
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, NavSatFix, NavSatStatus
from std_srvs.srv import Trigger

from vpr_ros.config import MAP_BUILDER_SECTIONS, KeyframeConfig, MapBuilderConfig, ModelConfig
from vpr_ros.errors import ConfigError, MapError, VprError
from vpr_ros.geometry import enu_from_geodetic
from vpr_ros.mapping.builder import MapBuilder
from vpr_ros.mapping.map_store import Keyframe, VprMap
from vpr_ros.mapping.pose_pairing import NONE, READY, LivePoseTrack, StampedPose
from vpr_ros.ros.conversions import image_to_rgb, pose_tuple, stamp_to_sec
from vpr_ros.ros.node_base import (VprNodeMixin, image_qos, intrinsics_of, lifecycle_class, per_camera, plain_init,
                                   pose_qos, sibling_topic)
from vpr_ros.ros.node_main import run_node
from vpr_ros.ros.params import LiveParameters, declare_config
from vpr_ros.runtime.base import DescriptorBackend
from vpr_ros.runtime.factory import open_backend

#: Keyframes waiting for the encoder before new ones are refused (counted as dropped).
MAX_PENDING = 64
#: DDS history of reliable image subscriptions: a burst of frames is taken, not overwritten.
IMAGE_QUEUE_DEPTH = 100
#: Images waiting for their pose before the oldest is paired with what there is.
MAX_WAITING_FOR_POSE = 200
#: Seconds the shutdown may spend encoding queued keyframes (the launch files allow more).
SHUTDOWN_BUDGET = 25.0


@dataclass
class _Waiting:
    camera: str
    msg: Any
    t: float
    deadline: float  # time.monotonic()


class MapBuilderCore(VprNodeMixin):
    """The map builder's behaviour; mixed into a plain ``Node`` (:class:`MapBuilderNode`) or a
    ``LifecycleNode`` (:data:`MapBuilderLifecycleNode`)."""

    _injected_backend: DescriptorBackend | None

    # ------------------------------------------------------------------ lifecycle steps
    def _setup(self) -> None:
        node: Any = self
        self.cfgs = declare_config(node, MAP_BUILDER_SECTIONS)
        self.cfg: MapBuilderConfig = self.cfgs[""]
        self.model_cfg: ModelConfig = self.cfgs["model"]
        self.kf_cfg: KeyframeConfig = self.cfgs["keyframes"]
        if not self.cfg.map_dir:
            raise MapError("parameter map_dir is empty: say where the map is written")
        self.backend: DescriptorBackend | None = None
        self.builder: MapBuilder | None = None
        self._subs: list[Any] = []
        self._lock = threading.Lock()       # builder + map
        self._pair_lock = threading.Lock()  # pose track + waiting images
        self._queue: queue.Queue = queue.Queue(maxsize=MAX_PENDING)
        self._track = LivePoseTrack()
        self._waiting: list[_Waiting] = []
        self._gps_origin: tuple[float, float, float] | None = None
        self._pose_frame = ""
        self._tf: Any = None
        self._tf_listener: Any = None
        self.images = self.keyframes = self.skipped_no_pose = self.dropped = self.errors = 0
        self.accepted = 0  # keyframes queued for encoding (each one ends up in the saved map)
        self.interpolated = 0
        self.intrinsics: dict[str, Any] = {}  # camera -> CameraIntrinsics from its CameraInfo
        self._depths: dict[str, deque] = {}  # camera -> recent (stamp, depth message)
        self.with_depth = self.depth_rejected = 0
        self.last_error = ""
        self._dirty = False
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._finished = False

        node.create_service(Trigger, "vpr/save_map", self._on_save)
        self.pub_diag = node.create_publisher(DiagnosticArray, self.cfg.diagnostics_topic, 10)
        node.create_timer(1.0, self._publish_diagnostics)
        node.create_timer(0.1, self._expire_waiting)
        if self.cfg.autosave_period > 0:
            node.create_timer(self.cfg.autosave_period, self._autosave)
        self.live = LiveParameters(node, MAP_BUILDER_SECTIONS, self.cfgs, self._apply_parameters)

    def _configure(self) -> None:
        self.backend = self._injected_backend or open_backend(
            self.cfg.backend, self.model_cfg, self.cfg.device, self.cfg.engine_cache_dir or None, gpu=self.cfg.gpu)
        base = None
        try:
            base = VprMap.load(self.cfg.map_dir)
            self.say("info", f"extending existing map in {self.cfg.map_dir} ({len(base)} keyframes)")
        except MapError:
            pass
        self.builder = MapBuilder(self.backend, self.kf_cfg, map_frame=self.cfg.map_frame,
                                  source=f"map_builder node ({', '.join(self.cfg.camera_topics)})", base=base,
                                  index=self.cfgs["index"], verification=self.cfgs["verification"])
        if self.cfg.pose_source == "tf":
            self._tf = self._tf_buffer()
        self.say("info", f"model {self.backend.model_id} (weights: {self.backend.weights_source})")
        self._stop.clear()
        self._finished = False
        self._worker = threading.Thread(target=self._work, name="vpr-map-encoder", daemon=True)
        self._worker.start()

    def _activate(self) -> None:
        node: Any = self
        self._subs = self.subscribe_cameras(self.cfg.camera_topics, self.cfg.transport,
                                            image_qos(self.cfg.qos, IMAGE_QUEUE_DEPTH), self._on_image)
        # the sibling of the image topic as remapped (image_transport's convention)
        infos = per_camera(self.cfg.camera_info_topics, self.cfg.camera_topics,
                           lambda c: sibling_topic(node.resolve_topic_name(c), "camera_info"))
        for camera, topic in infos.items():
            self._subs.append(node.create_subscription(CameraInfo, topic, lambda m, c=camera: self._on_info(c, m), 5))
        depths = per_camera(self.cfg.depth_topics, self.cfg.camera_topics, lambda c: "")
        for camera, topic in depths.items():
            if topic:
                self._depths[camera] = deque(maxlen=30)
                self._subs.append(node.create_subscription(Image, topic, lambda m, c=camera: self._depths[c].append(
                    (stamp_to_sec(m.header.stamp), m)), image_qos(self.cfg.qos, IMAGE_QUEUE_DEPTH)))
        qos = pose_qos(self.cfg.pose_qos)
        if self.cfg.pose_source == "navsatfix":
            self._subs.append(node.create_subscription(NavSatFix, self.cfg.pose_topic, self._on_fix, qos))
        elif self.cfg.pose_source == "odometry":
            self._subs.append(node.create_subscription(Odometry, self.cfg.pose_topic, self._on_odom, qos))

    def _deactivate(self) -> None:
        self.drop_subscriptions(self._subs)

    def _cleanup(self) -> None:
        """Finish (encode what is queued, save) and release the model."""
        self.drop_subscriptions(self._subs)
        if self.builder is not None and not self._finished:
            self.finish()
        self._stop.set()
        if self._worker is not None:
            self._worker.join(timeout=5.0)
            self._worker = None
        if self.backend is not None and self.backend is not self._injected_backend:
            self.backend.close()
        self.backend, self.builder = None, None
        if self._tf_listener is not None:
            self._tf_listener.unregister()
            if getattr(self._tf_listener, "executor", None) is not None:
                self._tf_listener.executor.shutdown()  # its spin thread
        self._tf = self._tf_listener = None
        if getattr(self, "_tf_node", None) is not None:
            self._tf_node.destroy_node()
            self._tf_node = None

    def _shutdown(self) -> None:
        self._cleanup()

    def _apply_parameters(self, new: dict[str, Any], changed: set[str]) -> None:
        self.cfg, self.kf_cfg = new[""], new["keyframes"]
        if self.builder is not None and any(n.startswith("keyframes.") for n in changed):
            with self._lock:
                self.builder.selector.cfg = self.kf_cfg
        self.say("info", "parameters set: " + ", ".join(sorted(changed)))

    # ------------------------------------------------------------------ poses
    def _on_odom(self, msg: Odometry) -> None:
        frame = msg.header.frame_id or self.cfg.map_frame
        self._add_pose(StampedPose(stamp_to_sec(msg.header.stamp), pose_tuple(msg.pose.pose), None, frame))

    def _on_fix(self, msg: NavSatFix) -> None:
        if msg.status.status < NavSatStatus.STATUS_FIX:
            self.say("warning", "NavSatFix without a fix ignored", throttle=5.0)
            return
        gps = (msg.latitude, msg.longitude, msg.altitude)
        if self._gps_origin is None:
            self._gps_origin = gps
            self.say("info", f"GPS origin of the map frame: lat {gps[0]:.7f}, lon {gps[1]:.7f}, alt {gps[2]:.1f}")
        e, n, u = enu_from_geodetic(*gps, self._gps_origin)
        self._add_pose(StampedPose(stamp_to_sec(msg.header.stamp), (e, n, u, 0.0, 0.0, 0.0, 1.0), gps,
                                   self.cfg.map_frame))

    def _add_pose(self, sample: StampedPose) -> None:
        with self._pair_lock:
            self._track.add(sample)
        self._resolve_waiting(final=False)

    def _tf_buffer(self) -> Any:
        """A tf2 buffer filled by a listener on a node of its own, spun on its own thread, so that
        /tf keeps arriving whatever our executor does and lookups never wait."""
        try:
            from tf2_ros import Buffer, TransformListener  # type: ignore[import-not-found]
        except ImportError:
            raise ConfigError("pose_source 'tf' needs tf2_ros (a ROS 2 installation; it is not available "
                              "from pip): use 'odometry' or 'navsatfix' here") from None
        import rclpy

        node: Any = self
        self._tf_node = rclpy.create_node(f"{node.get_name()}_tf_listener", context=node.context,
                                          use_global_arguments=False)
        buffer = Buffer()
        self._tf_listener = TransformListener(buffer, self._tf_node, spin_thread=True)
        return buffer

    def _tf_sample(self, t: float) -> StampedPose | None:
        """The map_frame -> base_frame transform at ``t`` if the buffer has it now (no waiting)."""
        from rclpy.time import Time

        try:
            tr = self._tf.lookup_transform(self.cfg.map_frame, self.cfg.base_frame, Time(nanoseconds=int(t * 1e9)))
        except Exception:  # noqa: BLE001 - tf2 raises several lookup/extrapolation exception types
            return None
        p, q = tr.transform.translation, tr.transform.rotation
        return StampedPose(t, (p.x, p.y, p.z, q.x, q.y, q.z, q.w), None, self.cfg.map_frame)

    def _pair(self, w: _Waiting, final: bool) -> tuple[str, StampedPose | None, str]:
        if self._tf is not None:
            s = self._tf_sample(w.t)
            return (READY, s, "tf") if s is not None else ((NONE if final else "wait"), None, "")
        p = self._track.lookup(w.t, self.cfg.max_pose_age, self.cfg.max_interpolation_gap, final)
        return p.status, p.sample, p.how

    # ------------------------------------------------------------------ camera model and depth
    def _on_info(self, camera: str, msg: CameraInfo) -> None:
        try:
            self.intrinsics[camera] = intrinsics_of(msg)
        except VprError as exc:
            self.say("warning", f"CameraInfo of '{camera}' ignored: {exc}", throttle=10.0)

    def _depth_for(self, camera: str, t: float, shape: tuple[int, int]) -> Any:
        """The aligned depth (metres [H, W]) nearest to ``t`` within max_depth_age, or None (counted
        when a depth stream exists but its image cannot be used)."""
        from vpr_ros.images import depth_to_metres

        recent = self._depths.get(camera)
        if not recent:
            return None
        t_d, msg = min(list(recent), key=lambda e: abs(e[0] - t))
        if abs(t_d - t) > self.cfg.max_depth_age:
            return None
        try:
            d = depth_to_metres(msg.encoding, msg.height, msg.width, msg.step, bool(msg.is_bigendian), msg.data)
        except VprError as exc:
            self.depth_rejected += 1
            self._error(f"depth for '{camera}' at {t:.3f} not used: {exc}")
            return None
        if d.shape != shape:
            self.depth_rejected += 1
            self._error(f"depth for '{camera}' is {d.shape[1]}x{d.shape[0]} but the image is {shape[1]}x{shape[0]}: "
                        "not used (it must be aligned to the camera image)")
            return None
        return d

    # ------------------------------------------------------------------ images
    def _on_image(self, camera: str, msg: Image | CompressedImage) -> None:
        self.images += 1
        w = _Waiting(camera, msg, stamp_to_sec(msg.header.stamp), time.monotonic() + self.cfg.max_pose_wait)
        with self._pair_lock:
            self._waiting.append(w)
            overflow = len(self._waiting) > MAX_WAITING_FOR_POSE
        self._resolve_waiting(final=False, force_oldest=overflow)

    def _expire_waiting(self) -> None:
        self._resolve_waiting(final=False, expire=True)

    def _resolve_waiting(self, final: bool, expire: bool = False, force_oldest: bool = False) -> None:
        """Pair every waiting image that can be paired now (in arrival order)."""
        done: list[tuple[_Waiting, str, StampedPose | None, str]] = []
        now = time.monotonic()
        with self._pair_lock:
            keep = []
            for i, w in enumerate(self._waiting):
                last_call = final or (expire and now >= w.deadline) or (force_oldest and i == 0)
                status, sample, how = self._pair(w, last_call)
                if status == READY or status == NONE:
                    done.append((w, status, sample, how))
                else:
                    keep.append(w)
            self._waiting = keep
        for w, status, sample, how in done:
            if status == NONE or sample is None:
                self._skip(w)
            else:
                self._offer(w, sample, how)

    def _skip(self, w: _Waiting) -> None:
        self.skipped_no_pose += 1
        source = "transform" if self._tf is not None else "pose"
        self.say("warning", f"image on '{w.camera}' at {w.t:.3f}: no {source} to pair with "
                            f"({self.cfg.pose_source}); skipped", throttle=2.0)

    def _offer(self, w: _Waiting, sample: StampedPose, how: str) -> None:
        builder = self.builder
        if builder is None:
            return
        self.interpolated += how == "interpolated"
        if not self._check_frame(sample.frame):
            return
        try:
            kf = Keyframe(stamp=w.t, pose=sample.pose, camera=w.camera, frame_id=w.msg.header.frame_id, gps=sample.gps)
        except VprError as exc:
            self._error(str(exc))
            return
        with self._lock:
            keyframe = builder.selector.offer(w.t, kf.pose)
        if not keyframe and not (self.kf_cfg.novelty_threshold > 0 and self._queue.qsize() == 0):
            return  # not a keyframe (appearance candidates are checked only when the worker is idle)
        try:
            self._queue.put_nowait((w.camera, w.msg, kf, keyframe))
            self.accepted += keyframe
        except queue.Full:
            self.dropped += 1
            if keyframe:
                with self._lock:  # forget it, so the next frame can become the keyframe instead
                    builder.selector.undo()

    def _check_frame(self, frame: str) -> bool:
        """Keyframe poses are in one frame: the first pose's (odometry header.frame_id)."""
        builder = self.builder
        if builder is None:
            return False
        with self._lock:
            vmap = builder.map
            if not self._pose_frame:
                if len(vmap) and vmap.manifest.map_frame != frame:
                    self._error(f"poses are in frame '{frame}' but the map being extended is in "
                                f"'{vmap.manifest.map_frame}'; images skipped")
                    return False
                self._pose_frame = frame
                if vmap.manifest.map_frame != frame:
                    self.say("info", f"keyframe poses are in frame '{frame}' (from the pose messages)")
                    vmap.manifest.map_frame = frame
            elif frame != self._pose_frame:
                self._error(f"pose frame changed from '{self._pose_frame}' to '{frame}'; image skipped")
                return False
        return True

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                camera, msg, kf, keyframe = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                self._encode(camera, msg, kf, keyframe)
            finally:
                self._queue.task_done()

    def _encode(self, camera: str, msg: Any, kf: Keyframe, keyframe: bool) -> None:
        builder, backend = self.builder, self.backend
        if builder is None or backend is None:
            return
        try:
            rgb = image_to_rgb(msg)
            intr = self.intrinsics.get(camera)
            if intr is not None and (intr.width, intr.height) != (rgb.shape[1], rgb.shape[0]):
                intr = None
            depth = None
            if builder.verifier.enabled and intr is not None:
                depth = self._depth_for(camera, kf.stamp, rgb.shape[:2])
            desc, [feats] = builder.encode([rgb], [depth], intr)
            self.with_depth += depth is not None
            with self._lock:
                added = builder.add_encoded(desc, [kf], [feats]) if keyframe else builder.consider_novel(desc, kf, feats)
                self._dirty = self._dirty or added is not None
            self.keyframes += added is not None
            if added is not None and self.keyframes % 10 == 0:
                self.say("info", f"{len(builder.map)} keyframes; last at x={kf.pose[0]:.1f} "
                                 f"y={kf.pose[1]:.1f} ({self.images} images received)")
        except VprError as exc:
            self._error(f"frame from '{camera}' skipped: {exc}")
        except Exception as exc:  # noqa: BLE001 - keep building on one bad frame
            self._error(f"frame from '{camera}' failed: {type(exc).__name__}: {exc}")

    def _error(self, text: str) -> None:
        self.errors += 1
        self.last_error = text
        self.say("error", text, throttle=1.0)

    # ------------------------------------------------------------------ saving
    def save(self, force: bool = False) -> str:
        """Save now (only when something changed, unless ``force``); returns a status line."""
        builder = self.builder
        if builder is None:
            return "not configured; nothing saved"
        with self._lock:
            if len(builder.map) == 0:
                return "map is empty; nothing saved"
            if not self._dirty and not force:
                return f"map unchanged ({len(builder.map)} keyframes); nothing to save"
            path = builder.save(self.cfg.map_dir)
            self._dirty = False
            n = len(builder.map)
        text = f"saved {n} keyframes to {path}"
        self.say("info", text)
        return text

    def finish(self, budget: float = SHUTDOWN_BUDGET) -> str:
        """Shutdown path: save what is encoded, encode the queued keyframes (within ``budget``
        seconds), save again; returns the last status line."""
        self._finished = True
        with self._pair_lock:
            waiting = len(self._waiting)
        if waiting:
            self._resolve_waiting(final=True)
        pending = self._queue.unfinished_tasks
        text = self.save()
        if pending:
            self.say("info", f"finishing: {pending} queued keyframe(s) to encode before exit")
            end = time.monotonic() + budget
            while self._queue.unfinished_tasks and time.monotonic() < end and self._worker is not None \
                    and self._worker.is_alive():
                time.sleep(0.02)
            if self._queue.unfinished_tasks:
                self._error(f"{self._queue.unfinished_tasks} queued keyframe(s) not encoded within {budget:.0f} s")
            text = self.save()
        return text

    def _autosave(self) -> None:
        try:
            self.save()
        except VprError as exc:
            self._error(f"autosave failed: {exc}")

    def _on_save(self, _req: Trigger.Request, resp: Trigger.Response) -> Trigger.Response:
        try:
            resp.message = self.save(force=True)
            resp.success = self.builder is not None
        except VprError as exc:
            resp.success, resp.message = False, str(exc)
        return resp

    def _publish_diagnostics(self) -> None:
        level = DiagnosticStatus.WARN if self.errors or self.skipped_no_pose else DiagnosticStatus.OK
        n = len(self.builder.map) if self.builder is not None else 0
        msg = self.last_error or ("images without a pose were skipped" if self.skipped_no_pose else f"{n} keyframes")
        if self.builder is None:
            level, msg = DiagnosticStatus.WARN, "not configured"
        b = self.backend
        values = {"map_dir": self.cfg.map_dir, "keyframes": n, "keyframes_accepted": self.accepted,
                  "images_received": self.images, "images_without_pose": self.skipped_no_pose,
                  "images_waiting_for_pose": len(self._waiting), "poses_interpolated": self.interpolated,
                  "keyframes_dropped": self.dropped, "errors": self.errors,
                  "keyframes_with_depth": self.with_depth, "depth_images_rejected": self.depth_rejected,
                  "cameras_with_intrinsics": ",".join(sorted(self.intrinsics)),
                  "pending": self._queue.qsize(), "model_id": b.model_id if b else ""}
        self.publish_status(self.pub_diag, "map_builder", level, msg, b.model_id if b else "", values)

    def destroy_node(self) -> None:
        """Destroying the node is its shutdown: queued keyframes are encoded and the map saved."""
        if hasattr(self, "_stop"):
            self._cleanup()
        super().destroy_node()  # type: ignore[misc]


class MapBuilderNode(MapBuilderCore, Node):
    """The map builder, configured and active from construction (``ros2 run vpr_ros map_builder``)."""

    def __init__(self, backend: DescriptorBackend | None = None, **kwargs: Any) -> None:
        plain_init(self, "map_builder", backend, kwargs)


#: The managed variant (``ros2 run vpr_ros map_builder_lifecycle``; ``lifecycle:=true``).
MapBuilderLifecycleNode = lifecycle_class(MapBuilderCore, "map_builder")


def _finish(node: Any) -> None:
    """run_node's last step: the final save, immune to a second Ctrl-C or ros2 launch's SIGTERM."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: node.say("info", "still saving the map; please wait"))
    if getattr(node, "builder", None) is not None and not node._finished:
        node.finish()


def main(args: list[str] | None = None) -> int:
    """Console script ``map_builder`` (``ros2 run vpr_ros map_builder``); saves the map on exit."""
    return run_node(MapBuilderNode, "map_builder", args, before_destroy=_finish)


def main_lifecycle(args: list[str] | None = None) -> int:
    """Console script ``map_builder_lifecycle``: starts unconfigured; drive it with ``ros2 lifecycle``."""
    return run_node(MapBuilderLifecycleNode, "map_builder", args, before_destroy=_finish)


if __name__ == "__main__":
    raise SystemExit(main())
