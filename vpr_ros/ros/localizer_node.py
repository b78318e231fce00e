"""Localizer node: camera images in; place matches, pose and loop closures out.

Subscriptions (relative, remappable), one per camera of ``camera_topics``: ``<camera>``
(sensor_msgs/Image, ``transport: raw``) or ``<camera>/compressed`` (CompressedImage,
``transport: compressed``). Publications: ``vpr/pose``, ``vpr/matches``, ``vpr/match_table``,
``vpr/loop_closures``, ``vpr/loop_closure_table``, ``vpr/map_keyframes`` (transient local),
``vpr/markers``, ``vpr/debug_image`` and ``/diagnostics``. Services: ``vpr/reload_map`` and
``vpr/save_map`` (std_srvs/Trigger).

Inference runs on one worker thread; only the newest frame per camera is kept. A bad message
is logged and counted; the node keeps running. ``score_threshold``, ``top_k``, the loop-closure
rules, ``position_sigma`` and ``map_dir`` can be changed at run time (``ros2 param set``);
the other parameters are read-only. ``localizer_lifecycle`` is the managed variant.
"""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseArray, PoseStamped, PoseWithCovarianceStamped
from nav_msgs.msg import Path
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import Trigger
from visualization_msgs.msg import MarkerArray

from vpr_ros.config import LOCALIZER_SECTIONS, LocalizerConfig, ModelConfig
from vpr_ros.debug_view import keyframe_image, side_by_side
from vpr_ros.errors import ConfigError, MapError, VprError
from vpr_ros.frame_slots import LatestFrameSlots
from vpr_ros.localization import LocalizationResult, Localizer
from vpr_ros.loop_closure import VERIFIED
from vpr_ros.mapping.map_store import ModelIdentity, VprMap
from vpr_ros.ros.conversions import image_to_rgb, pose_msg, rgb_to_image, sec_to_stamp, stamp_to_sec, table
from vpr_ros.ros.loop_output import describe_closure, publish_loop
from vpr_ros.ros.markers import keyframe_markers, match_markers
from vpr_ros.ros.diagnostics_values import map_cost_values
from vpr_ros.ros.node_base import (PROBLEM_WINDOW, STAMP_AHEAD_TOLERANCE, VprNodeMixin, image_qos, intrinsics_of, lifecycle_class, per_camera, plain_init,
                                   SERVICE_QOS, sibling_topic)
from vpr_ros.ros.node_main import node_help, run_node, wants_help
from vpr_ros.ros.params import LiveParameters, declare_config
from vpr_ros.runtime.base import DescriptorBackend
from vpr_ros.runtime.factory import open_backend

MATCH_COLUMNS = ("t_query", "t_db", "db_id", "rank", "score", "verified",
                 "x", "y", "z", "qx", "qy", "qz", "qw", "local_score")

class Counters:
    """Frame statistics for /diagnostics (single writer per field)."""

    def __init__(self) -> None:
        self.processed = 0
        self.errors = 0
        self.last_error = ""
        self.stamps_ahead = 0  # frames refused for a stamp far ahead of the node's clock
        self.initial_poses = 0  # poses sent to initial_pose.topic
        self.latency_ms: deque[float] = deque(maxlen=100)   # receive -> published
        self.inference_ms: deque[float] = deque(maxlen=100)
        self.loop_closures = 0
        self.loops_refused = 0   # passed the temporal rules, failed geometric verification
        self.debug_images = 0
        self.map_loads = 0


class LocalizerCore(VprNodeMixin):
    """The localizer's behaviour; mixed into a plain ``Node`` (:class:`LocalizerNode`) or a
    ``LifecycleNode`` (:data:`LocalizerLifecycleNode`)."""

    _injected_backend: DescriptorBackend | None

    # ------------------------------------------------------------------ lifecycle steps
    def _setup(self) -> None:
        """Parameters, publishers, services and the diagnostics timer (no model, no map)."""
        node: Any = self
        self.cfgs = declare_config(node, LOCALIZER_SECTIONS)
        self.cfg: LocalizerConfig = self.cfgs[""]
        self.model_cfg: ModelConfig = self.cfgs["model"]
        self.intrinsics: dict[str, Any] = {}  # camera -> CameraIntrinsics from its CameraInfo
        self.counters = Counters()
        self.slots = LatestFrameSlots()
        self.localizer: Localizer | None = None
        self.backend: DescriptorBackend | None = None
        self.loaded_map_dir = ""
        self.frame = self.cfg.map_frame or "map"  # the loaded map's frame once one is loaded
        self._status = (DiagnosticStatus.WARN, "not configured")
        self._subs: list[Any] = []
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self._load_lock = threading.Lock()

        self.pub_pose = node.create_publisher(PoseWithCovarianceStamped, "vpr/pose", 10)
        self.pub_matches = node.create_publisher(PoseArray, "vpr/matches", 10)
        self.pub_table = node.create_publisher(Float64MultiArray, "vpr/match_table", 10)
        self.pub_loops = node.create_publisher(Float64MultiArray, "vpr/loop_closures", 10)
        self.pub_loop_table = node.create_publisher(Float64MultiArray, "vpr/loop_closure_table", 10)
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                             reliability=ReliabilityPolicy.RELIABLE)
        self.pub_keyframes = node.create_publisher(Path, "vpr/map_keyframes", latched)
        self.pub_diag = node.create_publisher(DiagnosticArray, self.cfg.diagnostics_topic, 10)
        self.pub_markers = node.create_publisher(MarkerArray, "vpr/markers", 10)
        self.pub_debug = node.create_publisher(Image, "vpr/debug_image", 2)
        for name, handler in (("reload_map", self._on_reload), ("save_map", self._on_save),
                              ("relocalize", self._on_relocalize)):
            node.create_service(Trigger, f"vpr/{name}", self.guarded(handler, service=True), qos_profile=SERVICE_QOS)
        self.pub_initial = node.create_publisher(PoseWithCovarianceStamped, self.cfgs["initial_pose"].topic, 10)
        self._initial_armed, self._initial_last = True, -math.inf  # 'once': armed at start and by vpr/relocalize
        self._rate_window: deque[tuple[float, int, int, int]] = deque(maxlen=30)
        self._refusals_since_summary, self._last_refusal_summary = 0, time.monotonic()
        self.steady_timer(self.cfg.diagnostics_period, self._publish_diagnostics)
        self.live = LiveParameters(node, LOCALIZER_SECTIONS, self.cfgs, self._apply_parameters)

    def _configure(self) -> None:
        """Open the backend, load the map (a bad map is an ERROR diagnostic, not a failure) and
        start the inference worker."""
        self.slots = LatestFrameSlots()
        self.backend = self._injected_backend or open_backend(
            self.cfg.backend, self.model_cfg, self.cfg.device, self.cfg.engine_cache_dir or None, gpu=self.cfg.gpu)
        self.say("info", f"model {self.backend.model_id} on backend '{self.backend.name}' "
                         f"(weights: {self.backend.weights_source})")
        if self.backend.weights_source.startswith("random"):
            self.say("warning", "running with RANDOM weights: matches are meaningless for real use; "
                                "set model.weights (see docs/training.md, 'Pretrained weights')")
        self.load_map()
        self._stop.clear()
        self._worker = threading.Thread(target=self._work, name="vpr-inference", daemon=True)
        self._worker.start()
        if self._status[0] != DiagnosticStatus.ERROR:
            self._status = (DiagnosticStatus.OK, self._status[1])

    def _activate(self) -> None:
        node: Any = self
        self._subs = self.subscribe_cameras(self.cfg.camera_topics, self.cfg.transport, image_qos(self.cfg.qos),
                                            self._on_image)
        # the sibling of the image topic as remapped (image_transport's convention)
        infos = per_camera(self.cfg.camera_info_topics, self.cfg.camera_topics,
                           lambda c: sibling_topic(node.resolve_topic_name(c), "camera_info"))
        for camera, topic in infos.items():
            self._subs.append(node.create_subscription(CameraInfo, topic, self.guarded(
                lambda m, c=camera: self._on_info(c, m)), 5))
        suffix = "/compressed" if self.cfg.transport == "compressed" else ""
        self.say("info", "listening on " + ", ".join(node.resolve_topic_name(t) + suffix
                                                     for t in self.cfg.camera_topics))

    def _deactivate(self) -> None:
        self.drop_subscriptions(self._subs)

    def _cleanup(self) -> None:
        """Stop the worker and release the backend and the map."""
        self.drop_subscriptions(self._subs)
        self._stop.set()
        self.slots.close()
        if self._worker is not None:
            self._worker.join(timeout=30.0)
            self._worker = None
        if self.backend is not None and self.backend is not self._injected_backend:
            self.backend.close()
        self.backend, self.localizer, self.loaded_map_dir = None, None, ""
        self._status = (DiagnosticStatus.WARN, "not configured")

    def _shutdown(self) -> None:
        self._cleanup()

    # ------------------------------------------------------------------ parameters
    def _apply_parameters(self, new: dict[str, Any], changed: set[str]) -> None:
        cfg: LocalizerConfig = new[""]
        if "map_dir" in changed and cfg.map_dir != self.cfg.map_dir:
            if not cfg.map_dir:
                raise ConfigError("map_dir: must not be empty")
            manifest = VprMap.read_manifest(cfg.map_dir)  # refuse a non-map now, with the reason
            if self.backend is not None:
                diffs = manifest.model.differences(ModelIdentity.of_backend(self.backend))
                if diffs:
                    raise ConfigError(f"{cfg.map_dir} was built by another model: " + "; ".join(diffs))
            threading.Thread(target=self.load_map, args=(cfg.map_dir,), name="vpr-map-load", daemon=True).start()
        self.cfg = cfg
        if self.localizer is not None:
            self.localizer.update_config(cfg, new["verification"])
        def value(name: str) -> Any:  # 'score_threshold' or 'initial_pose.enabled'
            section, _, key = name.rpartition(".")
            return getattr(new.get(section, cfg), key, None)
        self.say("info", "parameters set: " + ", ".join(f"{n}={value(n)!r}" for n in sorted(changed)))

    # ------------------------------------------------------------------ map
    def load_map(self, map_dir: str | None = None) -> bool:
        """(Re)load ``map_dir`` (default: the parameter); swapped in atomically. On failure log, set
        an ERROR diagnostic and keep the previous map."""
        map_dir = map_dir if map_dir is not None else self.cfg.map_dir
        if self.backend is None:
            self._set_status(DiagnosticStatus.ERROR, "not configured: no model to check a map against")
            return False
        if not map_dir:
            self._set_status(DiagnosticStatus.ERROR, "no map: set parameter map_dir")
            return False
        with self._load_lock:
            try:
                # local features are checked when a match reads them (not all at start-up: 11 GB at 1M keyframes)
                vmap = VprMap.load(map_dir, expect=ModelIdentity.of_backend(self.backend), verify_features=False,
                                   memory_budget_mb=self.cfg.memory_budget_mb)
                frame = vmap.manifest.map_frame
                if self.cfg.map_frame and self.cfg.map_frame != frame:
                    raise MapError(f"{map_dir}: its keyframe poses are in frame '{frame}' but map_frame is "
                                   f"'{self.cfg.map_frame}': poses stamped '{self.cfg.map_frame}' would put the robot "
                                   f"in the wrong place (set map_frame to '{frame}', or to '' for the map's own "
                                   "frame, or rebuild the map in that frame)")
                if self.localizer is None:
                    self.localizer = Localizer(self.backend, vmap, self.cfg, self.cfgs["verification"])
                else:
                    self.localizer.set_map(vmap)
            except Exception as exc:  # noqa: BLE001 - a bad map (or a reader bug) must not kill the node
                kept = f"; still using {self.loaded_map_dir}" if self.localizer is not None else ""
                what = str(exc) if isinstance(exc, VprError) else f"unexpected {type(exc).__name__}: {exc}"
                self._set_status(DiagnosticStatus.ERROR, f"map not loaded: {what}{kept}")
                return False
            # the status goes with the swap: a later load (or a failed one) always reports last
            note = self.localizer.map_note
            self._set_status(DiagnosticStatus.WARN if note else DiagnosticStatus.OK,
                             f"map with {len(vmap)} keyframes loaded from {map_dir}" + (f"; {note}" if note else ""))
            self.loaded_map_dir = str(map_dir)
            self.frame = frame
            self.counters.map_loads += 1
        self._publish_keyframes(vmap)
        return True

    def _on_reload(self, _req: Trigger.Request, resp: Trigger.Response) -> Trigger.Response:
        """Re-read the map in the ``map_dir`` parameter (e.g. after the map builder saved)."""
        resp.success = self.load_map()
        resp.message = self._status[1]
        return resp

    def _on_save(self, _req: Trigger.Request, resp: Trigger.Response) -> Trigger.Response:
        """The localizer never writes a map (its writer, the map builder or vpr_ros_build_map, stores
        every keyframe as it is added): this answers whether the loaded map is what is on disk."""
        if self.localizer is None:
            resp.success, resp.message = False, "no map loaded"
            return resp
        loaded = self.localizer.map.manifest
        try:
            disk = VprMap.read_manifest(self.loaded_map_dir)
        except VprError as exc:
            resp.success, resp.message = False, f"the map on disk cannot be read ({exc}); nothing written"
            return resp
        if (disk.store_id, disk.generation) == (loaded.store_id, loaded.generation):
            resp.success = True
            resp.message = (f"nothing to save: the loaded map ({len(self.localizer.map)} keyframes, generation "
                            f"{loaded.generation}) is on disk in {self.loaded_map_dir}")
        else:
            resp.success = False
            resp.message = (f"not written: the map in {self.loaded_map_dir} is newer than the loaded one (generation "
                            f"{disk.generation} with {disk.count} keyframes, loaded {loaded.generation}); the "
                            "localizer never writes over a map: call vpr/reload_map to use it")
        return resp

    def _publish_keyframes(self, vmap: VprMap) -> None:
        node: Any = self
        path = Path()
        path.header.frame_id = self.frame
        path.header.stamp = node.get_clock().now().to_msg()
        for kf in vmap.keyframes:
            ps = PoseStamped()
            ps.header.frame_id = self.frame
            ps.header.stamp = sec_to_stamp(kf.stamp)
            ps.pose = pose_msg(kf.pose)
            path.poses.append(ps)
        self.safe_publish(self.pub_keyframes, path)
        self.safe_publish(self.pub_markers, keyframe_markers(vmap, self.frame, path.header.stamp))

    # ------------------------------------------------------------------ input
    def _on_info(self, camera: str, msg: CameraInfo) -> None:
        try:
            intr = intrinsics_of(msg)
        except VprError as exc:
            self.say("warning", f"CameraInfo of '{camera}' ignored: {exc}", throttle=10.0)
            return
        if self.intrinsics.get(camera) != intr:
            self.say("info", f"camera '{camera}': fx {intr.fx:.1f} fy {intr.fy:.1f} cx {intr.cx:.1f} cy {intr.cy:.1f} "
                             f"({intr.width}x{intr.height})")
        self.intrinsics[camera] = intr

    def _on_image(self, camera: str, msg: Image | CompressedImage) -> None:
        self.slots.put(camera, (msg, time.monotonic()))

    def _work(self) -> None:
        while not self._stop.is_set():
            item = self.slots.take(timeout=0.5)
            if item is None or self._stop.is_set():
                continue
            camera, (msg, received) = item
            try:
                self._process(camera, msg, received)
            except Exception as exc:  # noqa: BLE001 - one bad frame must not kill the node
                if self._stop.is_set() or not self.context_ok():
                    continue  # ROS went down under this frame (publishers invalid): a shutdown, not a failure
                if isinstance(exc, VprError):
                    self._error(f"frame from '{camera}' skipped: {exc}")
                else:
                    self._error(f"frame from '{camera}' failed unexpectedly: {type(exc).__name__}: {exc}")

    def _process(self, camera: str, msg: Image | CompressedImage, received: float) -> None:
        localizer = self.localizer
        if localizer is None:
            raise VprError("no map loaded yet (see the ERROR on diagnostics)")
        stamp = stamp_to_sec(msg.header.stamp)
        ahead = self.stamp_ahead(stamp)
        if ahead > STAMP_AHEAD_TOLERANCE:  # it would hold the loop-closure rate limiter until it resets
            self.counters.stamps_ahead += 1
            raise VprError(f"stamped {ahead:.0f} s ahead of the node's clock (the camera's clock is wrong?); not used")
        rgb = image_to_rgb(msg)
        intr = self.intrinsics.get(camera)
        if intr is not None and (intr.width, intr.height) != (rgb.shape[1], rgb.shape[0]):
            self.say("warning", f"CameraInfo of '{camera}' is {intr.width}x{intr.height} but its images are "
                                f"{rgb.shape[1]}x{rgb.shape[0]}: intrinsics not used", throttle=10.0)
            intr = None
        result = localizer.localize(rgb, stamp, camera, intr)
        if not self.context_ok():
            return
        self._publish(result, msg.header.stamp)
        if self.pub_markers.get_subscription_count() > 0:
            self.safe_publish(self.pub_markers, match_markers(result, self.frame, msg.header.stamp))
        if self.pub_debug.get_subscription_count() > 0:  # only built when someone looks
            top = result.matches[0]
            view = side_by_side(rgb, keyframe_image(top.keyframe.image_ref), top.db_id, top.score, result.accepted)
            self.safe_publish(self.pub_debug, rgb_to_image(view, stamp, self.frame))
            self.counters.debug_images += 1
        self.counters.processed += 1
        self.counters.inference_ms.append(result.timings_ms["inference"])
        self.counters.latency_ms.append((time.monotonic() - received) * 1e3)

    def _error(self, text: str) -> None:
        self.counters.errors += 1
        self.counters.last_error = text
        self.say("error", text, throttle=1.0)

    # ------------------------------------------------------------------ output
    def _publish(self, r: LocalizationResult, stamp: Any) -> None:
        frame = self.frame
        self._maybe_initial_pose(r, stamp)  # first: decided by the time the frame's table is out
        rows = [(r.stamp, m.keyframe.stamp, m.db_id, m.rank, m.score,
                 float(m.rank == 0 and r.loop is not None and r.loop.status == VERIFIED), *m.keyframe.pose, m.local_score)
                for m in r.matches]
        self.safe_publish(self.pub_table, table(MATCH_COLUMNS, rows))

        arr = PoseArray()
        arr.header.stamp, arr.header.frame_id = stamp, frame
        arr.poses = [pose_msg(m.keyframe.pose) for m in r.matches]
        self.safe_publish(self.pub_matches, arr)

        if r.pose is not None:
            msg = PoseWithCovarianceStamped()
            msg.header.stamp, msg.header.frame_id = stamp, frame
            msg.pose.pose = pose_msg(r.pose)
            msg.pose.covariance = r.covariance
            self.safe_publish(self.pub_pose, msg)

        if r.loop is not None:
            lp, v = r.loop, r.loop.verification
            if publish_loop(self, self.pub_loop_table, self.pub_loops, r):
                self.counters.loop_closures += 1
                self.say("info", f"loop closure: {describe_closure(r)}")
            elif v is not None and not v.verified:
                self.counters.loops_refused += 1
                self.say("debug", f"loop closure candidate t_query={lp.t_query:.3f} -> keyframe {lp.db_id} refused: "
                                  f"{v.reason}")
                self._refusals_since_summary += 1
                if self._refusals_since_summary and time.monotonic() - self._last_refusal_summary >= 10.0:
                    self.say("info", f"{self._refusals_since_summary} loop-closure candidate(s) refused by geometric "
                                     f"verification in the last {time.monotonic() - self._last_refusal_summary:.0f} s; "
                                     f"last: {v.reason}")
                    self._refusals_since_summary, self._last_refusal_summary = 0, time.monotonic()

    def _maybe_initial_pose(self, r: LocalizationResult, stamp: Any) -> None:
        """Nav2 relocalisation: a verified metric pose within the confidence gate goes to
        initial_pose.topic (AMCL's /initialpose), once per arming or at most every min_interval."""
        ip = self.cfgs["initial_pose"]
        if not ip.enabled or not r.metric or r.pose is None:
            return
        sigma = math.sqrt(max(r.covariance[0], r.covariance[7]))
        if not sigma <= ip.max_position_sigma:
            self.say("debug", f"initial pose not sent: position sigma {sigma:.2f} m > {ip.max_position_sigma} m")
            return
        if ip.mode == "once" and not self._initial_armed:
            return
        if ip.mode == "always" and r.stamp - self._initial_last < ip.min_interval:
            return
        msg = PoseWithCovarianceStamped()
        msg.header.stamp, msg.header.frame_id = stamp, self.frame
        msg.pose.pose = pose_msg(r.pose)
        msg.pose.covariance = r.covariance
        self.safe_publish(self.pub_initial, msg)
        self._initial_armed, self._initial_last = False, r.stamp
        self.counters.initial_poses += 1
        self.say("info", f"initial pose sent on {ip.topic}: x {r.pose[0]:.2f} y {r.pose[1]:.2f} in "
                         f"'{self.frame}' (sigma {sigma:.2f} m, keyframe {r.matches[0].db_id})")

    def _on_relocalize(self, _req: Trigger.Request, resp: Trigger.Response) -> Trigger.Response:
        """Arm initial_pose: the next verified metric pose within the gate is sent (mode 'once')."""
        if not self.cfgs["initial_pose"].enabled:
            resp.success, resp.message = False, "initial_pose.enabled is false: set it to true first"
            return resp
        self._initial_armed = True
        resp.success = True
        resp.message = (f"armed: the next verified metric pose within {self.cfgs['initial_pose'].max_position_sigma} m "
                        f"goes to {self.cfgs['initial_pose'].topic}")
        return resp

    def _set_status(self, level: bytes, text: str) -> None:
        self._status = (level, text)
        self.say({DiagnosticStatus.ERROR: "error", DiagnosticStatus.WARN: "warning"}.get(level, "info"), text)

    def _publish_diagnostics(self) -> None:
        c, s = self.counters, self.slots
        now = time.monotonic()
        self._rate_window.append((now, s.received, c.processed, s.dropped))
        t0, r0, p0, d0 = self._rate_window[0]
        dt = max(now - t0, 1e-9)
        level, text = self._status
        age = self.problem_age((c.errors,))
        if level == DiagnosticStatus.OK and age is not None:
            if age < PROBLEM_WINDOW:
                level, text = DiagnosticStatus.WARN, f"{c.errors} frame(s) failed; last {age:.0f} s ago: {c.last_error}"
            else:
                text = f"{text}; {c.errors} frame(s) failed, none in the last {age:.0f} s"
        mean = (lambda q: sum(q) / len(q) if q else 0.0)
        b = self.backend
        loc = self.localizer
        values = {
            "backend": b.name if b else "", "backend_selection": getattr(b, "selection", "") if b else "", "model_id": b.model_id if b else "",
            "weights": b.weights_source if b else "",
            "map_dir": self.cfg.map_dir, "map_loaded_from": self.loaded_map_dir, "map_frame": self.frame,
            "map_keyframes": len(loc.map) if loc else 0,
            **(map_cost_values(loc.map) if loc else {}),
            "frames_received": s.received, "frames_processed": c.processed,
            "frames_dropped": s.dropped, "frames_failed": c.errors,
            "input_rate_hz": f"{(s.received - r0) / dt:.2f}",
            "processed_rate_hz": f"{(c.processed - p0) / dt:.2f}",
            "dropped_rate_hz": f"{(s.dropped - d0) / dt:.2f}",
            "inference_ms_mean": f"{mean(c.inference_ms):.2f}",
            "latency_ms_mean": f"{mean(c.latency_ms):.2f}",
            "loop_closures": c.loop_closures, "loop_closures_refused_by_geometry": c.loops_refused,
            "frames_stamped_before_the_last_closure": loc.loops.stamps_back if loc else 0,
            "frames_stamped_ahead_of_the_clock": c.stamps_ahead, "initial_poses_sent": c.initial_poses,
            "cameras_with_intrinsics": ",".join(sorted(self.intrinsics)), "last_error": c.last_error,
        }
        self.publish_status(self.pub_diag, "localizer", level, text, b.model_id if b else "", values)

    def destroy_node(self) -> None:
        if hasattr(self, "_stop"):  # absent if setup failed
            self._cleanup()
        super().destroy_node()  # type: ignore[misc]


class LocalizerNode(LocalizerCore, Node):
    """The localizer, configured and active from construction (``ros2 run vpr_ros localizer``)."""

    def __init__(self, backend: DescriptorBackend | None = None, background: bool = False, **kwargs: Any) -> None:
        plain_init(self, "localizer", backend, kwargs, background)


#: The managed variant (``ros2 run vpr_ros localizer_lifecycle``; ``lifecycle:=true`` in the launch file).
LocalizerLifecycleNode = lifecycle_class(LocalizerCore, "localizer")


def main(args: list[str] | None = None) -> int:
    """Console script ``localizer`` (``ros2 run vpr_ros localizer``)."""
    if wants_help(args):
        print(node_help("localizer", LOCALIZER_SECTIONS, "Matches camera images against a map: vpr/pose, vpr/matches, vpr/match_table, loop closures, diagnostics (docs/ros_workspace.md, 'localizer')."))
        return 0
    return run_node(lambda: LocalizerNode(background=True), "localizer", args)


def main_lifecycle(args: list[str] | None = None) -> int:
    """Console script ``localizer_lifecycle``: starts unconfigured; drive it with ``ros2 lifecycle``."""
    if wants_help(args):
        print(node_help("localizer_lifecycle", LOCALIZER_SECTIONS, "The managed (lifecycle) variant. Matches camera images against a map: vpr/pose, vpr/matches, vpr/match_table, loop closures, diagnostics (docs/ros_workspace.md, 'localizer')."))
        return 0
    return run_node(LocalizerLifecycleNode, "localizer", args)


if __name__ == "__main__":
    raise SystemExit(main())
