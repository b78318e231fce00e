"""map_builder node: images + poses in, a map on disk out.

Subscriptions (relative), one per camera of ``camera_topics`` (``transport`` raw or compressed),
and the pose source: nav_msgs/Odometry on ``pose_topic`` (``pose_source: odometry``; poses keep
the message's ``header.frame_id``), sensor_msgs/NavSatFix (``navsatfix``: metres east/north/up of
the first fix, GPS kept on the keyframes) or TF (``tf``: ``map_frame`` -> ``base_frame``).

Each image waits (up to ``max_pose_wait`` s) for a pose at or after its stamp and is paired with
the pose interpolated between its neighbours (gap <= ``max_interpolation_gap``) or, failing
that, the nearest within ``max_pose_age``; images without a pose are skipped and counted.
Keyframes are chosen by the shared :class:`~vpr_ros.mapping.keyframes.KeyframeSelector`.

Durability: the map is a durable store (:mod:`vpr_ros.mapping.store`) that this node alone
writes (it holds ``map_dir``'s writer lock; a second writer is refused at start). An accepted
keyframe is committed to disk, raw image (and depth, camera model) included, before the callback
returns; the encoder thread turns it into a keyframe row (descriptor, local features) in one
more commit. So SIGKILL, a crash or a power cut at any moment loses no accepted keyframe: the
next start (or ``vpr_ros_build_map --finish``) encodes what was left pending. On SIGINT/SIGTERM
the node stops taking images and encodes what is pending; a second signal stops that after the
current keyframe and leaves the rest on disk. ``vpr/save_map`` and the autosave timer write a
snapshot of a slow-to-build index (HNSW, IVF; nothing is needed for exact search). A map that
cannot be read, or one of another model, is refused at start, never replaced.
``map_builder_lifecycle`` is the managed variant.
"""
from __future__ import annotations

import math
import queue
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from nav_msgs.msg import Odometry
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, NavSatFix, NavSatStatus
from std_srvs.srv import Trigger

from vpr_ros.config import MAP_BUILDER_SECTIONS, KeyframeConfig, MapBuilderConfig, ModelConfig
from vpr_ros.errors import ConfigError, DamagedPending, ImageError, MapError, VprError
from vpr_ros.geometry import enu_from_geodetic, pose_problem
from vpr_ros.mapping.builder import MapBuilder
from vpr_ros.mapping.map_store import Keyframe, ModelIdentity, VprMap
from vpr_ros.mapping.store.pending import PendingFrame, RawImage
from vpr_ros.mapping.pose_pairing import NONE, READY, LivePoseTrack, StampedPose
from vpr_ros.ros.diagnostics_values import map_cost_values
from vpr_ros.ros.conversions import image_to_rgb, pose_tuple, stamp_to_sec
from vpr_ros.ros.node_base import (PROBLEM_WINDOW, STAMP_AHEAD_TOLERANCE, VprNodeMixin, image_qos, intrinsics_of, lifecycle_class, per_camera, plain_init,
                                   SERVICE_QOS, pose_qos, sibling_topic)
from vpr_ros.ros.map_builder_slam import SlamSide
from vpr_ros.ros.node_main import SignalLatch, node_help, run_node, wants_help
from vpr_ros.ros.params import LiveParameters, declare_config
from vpr_ros.runtime.base import DescriptorBackend
from vpr_ros.runtime.factory import open_backend

#: Accepted keyframes waiting for the encoder (on disk) before new ones are refused (counted as
#: dropped): bounds the disk the raw images of a backlog take (~1 MB each for 640x480 rgb8).
MAX_PENDING = 256
#: DDS history of reliable image subscriptions: a burst of frames is taken, not overwritten.
IMAGE_QUEUE_DEPTH = 100
#: Images waiting for their pose before the oldest is paired with what there is.
MAX_WAITING_FOR_POSE = 200


@dataclass
class _Waiting:
    camera: str
    msg: Any
    t: float
    deadline: float  # time.monotonic()


class MapBuilderCore(SlamSide, VprNodeMixin):
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
        self._lock = threading.Lock()       # the map (index, keyframes): encoder thread and saves
        self._select_lock = threading.Lock()  # keyframe selection and the pose frame: image callbacks
        # (separate, so that an index snapshot, which holds _lock, never holds up an image callback)
        self._pair_lock = threading.Lock()  # pose track + waiting images
        self._queue: queue.Queue = queue.Queue()  # (seq, PendingFrame | None, msg, Keyframe, keyframe?)
        self._track = LivePoseTrack()
        self._waiting: list[_Waiting] = []
        self._gps_origin: tuple[float, float, float] | None = None
        self._pose_frame = ""
        self._tf: Any = None
        self._tf_listener: Any = None
        self.images = self.keyframes = self.skipped_no_pose = self.dropped = self.errors = 0
        self.accepted = 0  # keyframes committed to the store for encoding (each one ends up in the map)
        self.left_pending = 0  # accepted keyframes whose encoding failed; they stay on disk for the next start
        self.damaged_pending = 0  # stored pending rows that fail their checksum: skipped, never encoded
        self.store_error = ""  # the last failed commit (ERROR on /diagnostics until a commit succeeds)
        self.interpolated = 0
        self.bad_poses = 0  # pose samples refused (non-finite, not a unit quaternion, not on Earth)
        self.intrinsics: dict[str, Any] = {}  # camera -> CameraIntrinsics from its CameraInfo
        self._depths: dict[str, deque] = {}  # camera -> recent (stamp, depth message)
        self.with_depth = self.depth_rejected = 0
        self.last_error = ""
        self._dirty = False
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._finished = False
        self._abandon = threading.Event()  # a second signal: stop encoding, leave the rest on disk
        self._saving = threading.Lock()

        # a group of its own: an index snapshot on request never holds up the image callbacks
        node.create_service(Trigger, "vpr/save_map", self.guarded(self._on_save, service=True),
                            callback_group=MutuallyExclusiveCallbackGroup(), qos_profile=SERVICE_QOS)
        self._slam_setup()
        self.pub_diag = node.create_publisher(DiagnosticArray, self.cfg.diagnostics_topic, 10)
        self.steady_timer(1.0, self._publish_diagnostics)
        self.steady_timer(0.1, self._expire_waiting)
        if self.cfg.autosave_period > 0:
            self.steady_timer(self.cfg.autosave_period, self._autosave)
        self.live = LiveParameters(node, MAP_BUILDER_SECTIONS, self.cfgs, self._apply_parameters)

    def _configure(self) -> None:
        from pathlib import Path

        if (Path(self.cfg.map_dir) / "manifest.yaml").exists():
            VprMap.read_manifest(self.cfg.map_dir)  # refuse an unreadable map before loading a model
        self.backend = self._injected_backend or open_backend(
            self.cfg.backend, self.model_cfg, self.cfg.device, self.cfg.engine_cache_dir or None, gpu=self.cfg.gpu)
        # the one writer of map_dir: refused if another process writes it, if the map there cannot be
        # read (never replaced) or was built by another model
        vmap = VprMap.open_writer(self.cfg.map_dir, ModelIdentity.of_backend(self.backend), self.cfg.map_frame,
                                  f"map_builder node ({', '.join(self.cfg.camera_topics)})", durable=True)
        try:
            self.builder = MapBuilder(self.backend, self.kf_cfg, base=vmap, index=self.cfgs["index"],
                                      verification=self.cfgs["verification"])
            pending = vmap.pending_frames()
        except BaseException:
            vmap.close()
            raise
        if len(vmap):
            self.say("info", f"extending the map in {self.cfg.map_dir} ({len(vmap)} keyframes, frame "
                             f"'{vmap.manifest.map_frame}')")
        for note in vmap.notes:
            self.say("warning", f"map {self.cfg.map_dir}: {note}")
        if pending:
            self.say("info", f"{len(pending)} accepted keyframe(s) left pending by an earlier run: encoding them first")
            for seq in pending:
                self._queue.put((seq, None, None, None, True))
        self._slam_configure()
        if self.cfg.pose_source == "tf":
            self._tf = self._tf_buffer()
        self.say("info", f"model {self.backend.model_id} (weights: {self.backend.weights_source})")
        if self.backend.weights_source.startswith("random"):
            self.say("warning", "running with RANDOM weights: the map's descriptors are meaningless for real use; "
                                "set model.weights (see docs/training.md, 'Pretrained weights')")
        self._stop.clear()
        self._abandon.clear()
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
            self._subs.append(node.create_subscription(CameraInfo, topic, self.guarded(
                lambda m, c=camera: self._on_info(c, m)), 5))
        depths = per_camera(self.cfg.depth_topics, self.cfg.camera_topics, lambda c: "")
        for camera, topic in depths.items():
            if topic:
                self._depths[camera] = deque(maxlen=30)
                self._subs.append(node.create_subscription(Image, topic, self.guarded(lambda m, c=camera: self._depths[
                    c].append((stamp_to_sec(m.header.stamp), m))), image_qos(self.cfg.qos, IMAGE_QUEUE_DEPTH)))
        qos = pose_qos(self.cfg.pose_qos)
        if self.cfg.pose_source == "navsatfix":
            self._subs.append(node.create_subscription(NavSatFix, self.cfg.pose_topic, self.guarded(self._on_fix), qos))
        elif self.cfg.pose_source == "odometry":
            self._subs.append(node.create_subscription(Odometry, self.cfg.pose_topic, self.guarded(self._on_odom), qos))
        self._subs += self._slam_activate()

    def _deactivate(self) -> None:
        self.drop_subscriptions(self._subs)

    def _cleanup(self) -> None:
        """Finish (encode what is queued, save) and release the model."""
        self.drop_subscriptions(self._subs)
        if self.builder is not None and not self._finished:
            self.finish()
        self._stop.set()
        if self._worker is not None:
            # it finishes the keyframe in hand (or leaves it pending on disk if the process ends first)
            self._worker.join(timeout=5.0)
            self._worker = None
        if self.builder is not None:
            self.builder.map.close()  # releases the writer lock
        if self.backend is not None and self.backend is not self._injected_backend:
            self.backend.close()
        self.backend, self.builder = None, None
        self._queue = queue.Queue()
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
        if self.closer is not None and any(n.startswith("loop_closure.") for n in changed):
            self.closer.update_config(new["loop_closure"])
        if self.builder is not None and any(n.startswith("keyframes.") for n in changed):
            with self._select_lock:
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
        if not all(math.isfinite(v) for v in gps) or not (-90.0 <= gps[0] <= 90.0 and -180.0 <= gps[1] <= 180.0):
            self.bad_poses += 1
            self._error(f"NavSatFix at {stamp_to_sec(msg.header.stamp):.3f} refused: latitude, longitude, altitude "
                        f"{gps} are not a position on Earth")
            return
        if self._gps_origin is None:
            self._gps_origin = gps
            self.say("info", f"GPS origin of the map frame: lat {gps[0]:.7f}, lon {gps[1]:.7f}, alt {gps[2]:.1f}")
        e, n, u = enu_from_geodetic(*gps, self._gps_origin)
        self._add_pose(StampedPose(stamp_to_sec(msg.header.stamp), (e, n, u, 0.0, 0.0, 0.0, 1.0), gps,
                                   self.cfg.map_frame))

    def _add_pose(self, sample: StampedPose) -> None:
        """A pose sample, refused (counted, reported) unless finite with a unit quaternion: one bad
        sample would otherwise poison every interpolation across it."""
        problem = pose_problem(sample.t, sample.pose)
        ahead = self.stamp_ahead(sample.t) if problem is None else 0.0
        if ahead > STAMP_AHEAD_TOLERANCE:  # one sample from the future would stay the newest for good
            problem = f"stamped {ahead:.0f} s ahead of the node's clock (the sender's clock is wrong?)"
        if problem:
            self.bad_poses += 1
            self._error(f"pose at {sample.t:.3f} refused: {problem}")
            return
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

    def _depth_msg_for(self, camera: str, t: float, image: Any = None) -> RawImage | None:
        """The depth image nearest to ``t`` within max_depth_age, as received (stored with the
        keyframe), or None: no depth stream, none close enough, or no use for it (verification
        off, no camera model yet). A depth image that cannot be used is counted and reported."""
        from vpr_ros.images import DEPTH_ENCODINGS

        recent = self._depths.get(camera)
        builder = self.builder
        if not recent or builder is None or not builder.verifier.enabled or camera not in self.intrinsics:
            return None
        t_d, msg = min(list(recent), key=lambda e: abs(e[0] - t))
        if abs(t_d - t) > self.cfg.max_depth_age:
            return None
        if msg.encoding not in DEPTH_ENCODINGS:
            self.depth_rejected += 1
            self._error(f"depth for '{camera}' at {t:.3f} not used: encoding '{msg.encoding}' is not a depth "
                        f"encoding ({', '.join(DEPTH_ENCODINGS)})")
            return None
        size = (getattr(image, "width", 0), getattr(image, "height", 0))
        if size[0] and (msg.width, msg.height) != size:
            self.depth_rejected += 1
            self._error(f"depth for '{camera}' is {msg.width}x{msg.height} but the image is {size[0]}x{size[1]}: "
                        "not used (it must be aligned to the camera image)")
            return None
        return RawImage.of_message(msg)

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
            kf = Keyframe(stamp=w.t, pose=sample.pose, camera=w.camera, frame_id=w.msg.header.frame_id, gps=sample.gps,
                          session=builder.session)
        except VprError as exc:
            self._error(str(exc))
            return
        with self._select_lock:
            keyframe = builder.selector.offer(w.t, kf.pose)
        if not keyframe:
            if self.kf_cfg.novelty_threshold > 0 and self._queue.unfinished_tasks == 0:
                self._queue.put((0, None, w.msg, kf, False))  # an appearance candidate, checked while idle
            return
        reason = ""
        if self._queue.unfinished_tasks >= MAX_PENDING:
            reason = f"{MAX_PENDING} keyframes wait for the encoder already"
        else:
            try:
                frame = PendingFrame(kf, RawImage.of_message(w.msg), self._depth_msg_for(w.camera, w.t, w.msg),
                                     self.intrinsics.get(w.camera))
                frame = replace(frame, seq=builder.map.add_pending(frame))  # on disk before we go on
            except VprError as exc:
                reason = f"could not be stored: {exc}"
                self._store_failed(f"keyframe at {w.t:.3f} from '{w.camera}' {reason}")
        if reason:
            self.dropped += 1
            with self._select_lock:  # forget it, so the next frame can become the keyframe instead
                builder.selector.undo()
            return
        self.accepted += 1
        self._queue.put((frame.seq, frame, w.msg, kf, True))

    def _check_frame(self, frame: str) -> bool:
        """Keyframe poses are in one frame: the first pose's (odometry header.frame_id)."""
        builder = self.builder
        if builder is None:
            return False
        with self._select_lock:
            vmap = builder.map
            if not self._pose_frame:
                if len(vmap) and vmap.manifest.map_frame != frame:
                    self._error(f"poses are in frame '{frame}' but the map being extended is in "
                                f"'{vmap.manifest.map_frame}'; images skipped")
                    return False
                self._pose_frame = frame
                if vmap.manifest.map_frame != frame:
                    self.say("info", f"keyframe poses are in frame '{frame}' (from the pose messages)")
                    try:
                        vmap.set_map_frame(frame)
                    except VprError as exc:
                        self._store_failed(f"pose frame '{frame}' not stored: {exc}")
                        self._pose_frame = ""
                        return False
            elif frame != self._pose_frame:
                self._error(f"pose frame changed from '{self._pose_frame}' to '{frame}'; image skipped")
                return False
        return True

    def _work(self) -> None:
        while not self._stop.is_set():
            if self._abandon.is_set():  # a second signal: what is queued stays pending on disk
                self._stop.wait(0.5)
                continue
            try:
                item = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                if item[4]:
                    self._encode_keyframe(item[0], item[1])
                else:
                    self._consider(item[2], item[3])
            finally:
                self._queue.task_done()

    def _encode_keyframe(self, seq: int, frame: PendingFrame | None) -> None:
        """Encode an accepted (stored) keyframe and commit it in place of its pending entry. An image
        that cannot be decoded is dropped with the reason; a commit that fails leaves it pending."""
        builder = self.builder
        if builder is None:
            return
        try:
            if frame is None:  # left by an earlier run
                frame = builder.map.read_pending(seq)
            desc, feats = builder.encode_frame(frame)
            self._slam_check(desc, feats, frame)  # closes loops against the keyframes before this one
            kf = frame.keyframe
            if kf.session == builder.session:  # in the map's frame once the session is aligned
                kf.pose = self._slam_pose(kf.pose)  # type: ignore[assignment]
            with self._lock:
                builder.add_encoded(desc, [kf], feats, pending=[seq])
            self._slam_added(kf)
            self.store_error = ""
        except ImageError as exc:
            self._error(f"keyframe {seq} dropped: its image cannot be used: {exc}")
            try:
                builder.map.drop_pending(seq)
            except VprError as exc2:
                self._store_failed(f"pending keyframe {seq} could not be dropped: {exc2}")
            return
        except DamagedPending as exc:
            self.damaged_pending += 1
            self._store_failed(f"pending keyframe {seq} skipped: {exc}; it cannot be encoded (vpr_ros_build_map "
                               f"--finish --drop-damaged --map-dir {self.cfg.map_dir} deletes it)")
            return
        except VprError as exc:
            self.left_pending += 1
            self._store_failed(f"keyframe {seq} stays pending on disk (encoded at the next start): {exc}")
            return
        except Exception as exc:  # noqa: BLE001 - keep building; the frame is safe on disk
            self.left_pending += 1
            self._store_failed(f"keyframe {seq} stays pending on disk: {type(exc).__name__}: {exc}")
            return
        self.with_depth += frame.depth is not None
        self.keyframes += 1
        if self.keyframes % 10 == 0:
            kf = frame.keyframe
            self.say("info", f"{len(builder.map)} keyframes; last at x={kf.pose[0]:.1f} "
                             f"y={kf.pose[1]:.1f} ({self.images} images received)")

    def _consider(self, msg: Any, kf: Keyframe) -> None:
        """An appearance candidate (not accepted by the motion rules): added if it looks new."""
        builder = self.builder
        if builder is None:
            return
        try:
            rgb = image_to_rgb(msg)
            intr = self.intrinsics.get(kf.camera)
            if intr is not None and (intr.width, intr.height) != (rgb.shape[1], rgb.shape[0]):
                intr = None
            depth_msg = self._depth_msg_for(kf.camera, kf.stamp, msg) if intr else None
            depth = depth_msg.depth_metres() if depth_msg is not None else None
            desc, [feats] = builder.encode([rgb], [depth], intr)
            kf.pose = self._slam_pose(kf.pose)  # type: ignore[assignment]
            with self._lock, self._select_lock:
                added = builder.consider_novel(desc, kf, feats)
            if added is not None:
                self._slam_added(kf)
            self.keyframes += added is not None
        except ImageError as exc:
            self._error(f"frame from '{kf.camera}' skipped: {exc}")
        except VprError as exc:
            self._store_failed(f"novel frame from '{kf.camera}' not stored: {exc}")
        except Exception as exc:  # noqa: BLE001 - keep building on one bad frame
            self._error(f"frame from '{kf.camera}' failed: {type(exc).__name__}: {exc}")

    def _error(self, text: str) -> None:
        self.errors += 1
        self.last_error = text
        self.say("error", text, throttle=1.0)

    def _store_failed(self, text: str) -> None:
        self.store_error = text
        self._error(text)

    # ------------------------------------------------------------------ saving
    def save(self) -> str:
        """Snapshot a slow-to-build index (every keyframe is on disk already); returns a status line."""
        builder = self.builder
        if builder is None:
            return "not configured; nothing saved"
        with self._saving:
            with self._lock:
                builder.save()
                n, gen = len(builder.map), builder.map.manifest.generation
            pending = self._queue.unfinished_tasks
        text = (f"map in {self.cfg.map_dir}: {n} keyframes on disk (generation {gen})"
                + (f", {pending} accepted keyframe(s) still to encode (on disk too)" if pending else ""))
        self.say("info", text)
        return text

    def finish(self, abandon: "SignalLatch | None" = None) -> str:
        """Shutdown path: take the images still waiting for a pose, encode every pending keyframe
        (until done, or until ``abandon`` fires (a second signal): then they stay on disk for the
        next start), snapshot the index; returns the last status line. No time budget: nothing
        accepted depends on finishing."""
        self._finished = True
        with self._pair_lock:
            waiting = len(self._waiting)
        pending = self._queue.unfinished_tasks
        # announced first (from here a second signal stops the encoding), also when nothing is left
        self.say("info", f"finishing: {pending} accepted keyframe(s) to encode before exit"
                         + (f", {waiting} image(s) still waiting for a pose" if waiting else "")
                         + " (accepted ones are on disk already: a second Ctrl-C leaves them for the next start)"
                 if pending or waiting else "finishing: every accepted keyframe is encoded")
        if waiting:
            self._resolve_waiting(final=True)
        if self._queue.unfinished_tasks:
            while self._queue.unfinished_tasks and not self._abandon.is_set() and self._worker is not None \
                    and self._worker.is_alive():
                if abandon is None:
                    self._abandon.wait(0.05)
                elif abandon.wait(0.05):
                    self._abandon.set()  # here, on this thread: never from the signal handler
        left = self._queue.unfinished_tasks + self.left_pending
        try:
            text = self.save()
        except VprError as exc:
            text = f"index snapshot not written ({exc}); every keyframe is on disk"
            self.say("warning", text)
        if left:
            self.say("info", f"{left} accepted keyframe(s) left pending in {self.cfg.map_dir}: they are encoded "
                             "at the next start, or by vpr_ros_build_map --finish --map-dir ...")
        return text

    def _autosave(self) -> None:
        """Timer: the index snapshot is written on a thread of its own (the callbacks go on)."""
        if self._saving.locked() or self.builder is None:
            return
        threading.Thread(target=self._save_quietly, name="vpr-map-snapshot", daemon=True).start()

    def _save_quietly(self) -> None:
        try:
            self.save()
        except VprError as exc:
            self._store_failed(f"autosave failed: {exc}")

    def _on_save(self, _req: Trigger.Request, resp: Trigger.Response) -> Trigger.Response:
        try:
            resp.message = self.save()
            resp.success = self.builder is not None
        except VprError as exc:
            self._store_failed(f"save failed: {exc}")
            resp.success, resp.message = False, f"save failed: {exc}; every keyframe stays on disk"
        return resp

    def _publish_diagnostics(self) -> None:
        n = len(self.builder.map) if self.builder is not None else 0
        age = self.problem_age((self.errors, self.skipped_no_pose, self.bad_poses))
        recent = age is not None and age < PROBLEM_WINDOW
        level = DiagnosticStatus.WARN if recent else DiagnosticStatus.OK
        what = self.last_error or "images without a pose were skipped"
        msg = (f"{n} keyframes; last problem {age:.0f} s ago: {what}" if recent else
               f"{n} keyframes" + (f"; no problem in the last {age:.0f} s (last: {what})" if age is not None else ""))
        if self.store_error:
            level, msg = DiagnosticStatus.ERROR, self.store_error
        if self.builder is None:
            level, msg = DiagnosticStatus.WARN, "not configured"
        b = self.backend
        values = {"map_dir": self.cfg.map_dir, "keyframes": n, "keyframes_accepted": self.accepted,
                  "images_received": self.images, "images_without_pose": self.skipped_no_pose,
                  "images_waiting_for_pose": len(self._waiting), "poses_interpolated": self.interpolated,
                  "poses_refused": self.bad_poses,
                  "keyframes_dropped": self.dropped, "errors": self.errors,
                  "keyframes_with_depth": self.with_depth, "depth_images_rejected": self.depth_rejected,
                  "cameras_with_intrinsics": ",".join(sorted(self.intrinsics)),
                  "pending": self._queue.unfinished_tasks, "left_pending": self.left_pending,
                  "damaged_pending": self.damaged_pending,
                  "generation": self.builder.map.manifest.generation if self.builder is not None else 0,
                  "session": self.builder.session if self.builder is not None else -1, **self._slam_diagnostics(),
                  **(map_cost_values(self.builder.map) if self.builder is not None else {}),
                  "backend": b.name if b else "", "backend_selection": getattr(b, "selection", "") if b else "", "model_id": b.model_id if b else ""}
        self.publish_status(self.pub_diag, "map_builder", level, msg, b.model_id if b else "", values)

    def destroy_node(self) -> None:
        """Destroying the node is its shutdown: queued keyframes are encoded and the map saved."""
        if hasattr(self, "_stop"):
            self._cleanup()
        super().destroy_node()  # type: ignore[misc]


class MapBuilderNode(MapBuilderCore, Node):
    """The map builder, configured and active from construction (``ros2 run vpr_ros map_builder``)."""

    def __init__(self, backend: DescriptorBackend | None = None, background: bool = False, **kwargs: Any) -> None:
        plain_init(self, "map_builder", backend, kwargs, background)


#: The managed variant (``ros2 run vpr_ros map_builder_lifecycle``; ``lifecycle:=true``).
MapBuilderLifecycleNode = lifecycle_class(MapBuilderCore, "map_builder")


def _finish(node: Any) -> None:
    """run_node's last step: encode what is pending; a further SIGINT/SIGTERM (a second Ctrl-C,
    ros2 launch's escalation) stops that after the keyframe in hand, leaving the rest on disk."""
    abandon = SignalLatch().install(signal.SIGINT, signal.SIGTERM)
    if getattr(node, "builder", None) is not None and not node._finished:
        node.finish(abandon)


def main(args: list[str] | None = None) -> int:
    """Console script ``map_builder`` (``ros2 run vpr_ros map_builder``); saves the map on exit."""
    if wants_help(args):
        print(node_help("map_builder", MAP_BUILDER_SECTIONS, "Builds a map from camera images and poses, every accepted keyframe stored as it arrives; live loop closure for SLAM (docs/ros_workspace.md, 'map_builder')."))
        return 0
    return run_node(lambda: MapBuilderNode(background=True), "map_builder", args, before_destroy=_finish)


def main_lifecycle(args: list[str] | None = None) -> int:
    """Console script ``map_builder_lifecycle``: starts unconfigured; drive it with ``ros2 lifecycle``."""
    if wants_help(args):
        print(node_help("map_builder_lifecycle", MAP_BUILDER_SECTIONS, "The managed (lifecycle) variant. Builds a map from camera images and poses, every accepted keyframe stored as it arrives; live loop closure for SLAM (docs/ros_workspace.md, 'map_builder')."))
        return 0
    return run_node(MapBuilderLifecycleNode, "map_builder", args, before_destroy=_finish)


if __name__ == "__main__":
    raise SystemExit(main())
