"""The map builder's SLAM side (mixed into :class:`~vpr_ros.ros.map_builder_node.MapBuilderCore`):

* live loop closure (``loop_closure.enabled``): each new keyframe, with its one forward pass, is
  matched against the keyframes older than ``loop_closure.exclude_recent`` before it is added
  (:class:`~vpr_ros.mapping.live_loops.LiveLoopCloser`); verified closures of the running session go
  to ``vpr/loop_closures`` as ``[t_cur, t_pre]`` (LIO-SAM's external loop-closure input), every
  decision to ``vpr/loop_closure_table`` (with the metric relative pose and its covariance), and an
  accepted match's pose to ``vpr/pose``;
* sessions: a node started on a map with keyframes records a new session; verified metric closures
  against the earlier sessions align its odometry frame with the map's
  (:class:`~vpr_ros.mapping.session_tracking.SessionTracker`), and its keyframes are moved there;
* poses that follow the back end (``optimized_path_topic``): the optimised trajectory
  (``nav_msgs/Path``) re-anchors every keyframe it reaches (:func:`~vpr_ros.mapping.reanchor.reanchor`),
  in memory and on disk.
"""
from __future__ import annotations

from typing import Any

from geometry_msgs.msg import PoseWithCovarianceStamped
from nav_msgs.msg import Path
from std_msgs.msg import Float64MultiArray

from vpr_ros.errors import VprError
from vpr_ros.mapping.live_loops import LiveClosure, LiveLoopCloser, live_index_type
from vpr_ros.mapping.reanchor import reanchor
from vpr_ros.mapping.session_tracking import MIN_ALIGNMENT_CLOSURES, SessionTracker
from vpr_ros.ros.conversions import pose_msg, pose_tuple, sec_to_stamp, stamp_to_sec
from vpr_ros.ros.loop_output import describe_closure, publish_loop



class SlamSide:
    """State and callbacks of the SLAM side; the node calls the ``_slam_*`` hooks."""

    def _slam_setup(self) -> None:
        node: Any = self
        self.pub_loops = node.create_publisher(Float64MultiArray, "vpr/loop_closures", 10)
        self.pub_loop_table = node.create_publisher(Float64MultiArray, "vpr/loop_closure_table", 10)
        self.pub_pose = node.create_publisher(PoseWithCovarianceStamped, "vpr/pose", 10)
        self.closer: LiveLoopCloser | None = None
        self.loop_closures = self.loops_prior = self.loops_refused = self.loop_decisions = 0
        self.path_updates = self.path_unreached = 0
        self.tracker: SessionTracker | None = None

    def _slam_configure(self) -> None:
        node: Any = self
        builder = node.builder
        cfg = node.cfgs["loop_closure"]
        self.tracker = SessionTracker(builder.map, builder.session, cfg.enabled)
        self.loop_closures = self.loops_prior = self.loops_refused = self.loop_decisions = 0
        if not cfg.enabled:
            self.closer = None
            return
        kind = live_index_type(builder.index_cfg, len(builder.map), builder.map.model.descriptor_dim)
        if builder.map.manifest.index_type != kind:
            node.say("info", f"live loop closure: the index grows online as '{kind}' "
                             f"({len(builder.map)} keyframes converted)")
            builder.map.reindex(kind, builder.index_cfg)
        builder.live = True  # each save re-checks the kind against the memory budget
        self.closer = LiveLoopCloser(node.backend, builder.map, cfg, node.cfgs["verification"], builder.session)
        prior = len(builder.map)
        node.say("info", f"live loop closure on: session {builder.session}, keyframes older than "
                         f"{cfg.exclude_recent:.0f} s are searched" +
                         (f" (and the {prior} of the map's earlier sessions: their closures are marked "
                          "'prior' and not sent as pairs)" if prior else ""))

    def _slam_activate(self) -> list[Any]:
        node: Any = self
        if not node.cfg.optimized_path_topic:
            return []
        return [node.create_subscription(Path, node.cfg.optimized_path_topic, node.guarded(self._on_path), 5)]

    def _slam_pose(self, pose: tuple[float, ...]) -> tuple[float, ...]:
        """A keyframe pose of this session in the map frame (once the session is aligned)."""
        return self.tracker.pose_in_map(pose) if self.tracker is not None else pose

    def _slam_added(self, keyframe: Any) -> None:
        if self.closer is not None:
            self.closer.added(keyframe)
        node: Any = self
        if self.tracker is not None and keyframe.session == self.tracker.session:
            try:
                self.tracker.added(keyframe)
            except VprError as exc:
                node._store_failed(f"session state not stored: {exc}")

    def _slam_check(self, desc: Any, feats: Any, frame: Any) -> LiveClosure | None:
        """Match a new keyframe before it is added; publishes what the decision calls for."""
        node: Any = self
        closer = self.closer
        if closer is None or frame.keyframe.session != closer.session:
            return None  # off, or a keyframe of an earlier run encoded late: its closures mean nothing now
        try:
            closure = closer.check(desc, feats[0] if feats else None, frame.keyframe, frame.intrinsics)
        except VprError as exc:
            node._error(f"loop closure check of the keyframe at {frame.keyframe.stamp:.3f} failed: {exc}")
            return None
        if closure is None:
            return None
        r = closure.result
        stamp = sec_to_stamp(frame.keyframe.stamp)
        if r.pose is not None:
            msg = PoseWithCovarianceStamped()
            msg.header.stamp, msg.header.frame_id = stamp, node.builder.map.manifest.map_frame
            msg.pose.pose = pose_msg(r.pose)
            msg.pose.covariance = r.covariance
            node.safe_publish(self.pub_pose, msg)
        if r.loop is None:
            return closure
        published = publish_loop(node, self.pub_loop_table, self.pub_loops, r, closure.prior)
        self.loop_decisions += 1
        if published:
            self.loop_closures += 1
            node.say("info", f"loop closure: {describe_closure(r)}")
        elif r.loop.publish and closure.prior:
            self.loops_prior += 1
            node.say("info", f"closure with an earlier session (not sent as a pair): {describe_closure(r)}")
            self._collect_alignment(r, frame.keyframe)
        elif r.loop.verification is not None and not r.loop.verification.verified:
            self.loops_refused += 1
            node.say("debug", f"loop closure candidate at {r.loop.t_query:.3f} -> keyframe {r.loop.db_id} refused: "
                              f"{r.loop.verification.reason}")
        return closure

    def _collect_alignment(self, r: Any, keyframe: Any) -> None:
        """A verified metric closure with an earlier session: one estimate of where this session's
        frame lies in the map's (:class:`~vpr_ros.mapping.session_tracking.SessionTracker`: only
        closures with the reference session or an aligned one count; every change is stored)."""
        node: Any = self
        v = r.loop.verification
        if r.relative is None or v is None or not v.metric or self.tracker is None:
            return
        matched = r.matches[0].keyframe
        try:
            with node._lock:
                event = self.tracker.closure(matched, keyframe.pose, r.relative, keyframe.stamp)
        except VprError as exc:
            node._store_failed(f"session alignment not stored: {exc}")
            return
        session = node.builder.session
        if event is None:
            node.say("debug", f"closure with keyframe {matched.id} of session {matched.session} not used for "
                              f"alignment: that session is {node.builder.map.session_record(matched.session).describe()}")
        elif event.kind == "aligned":
            node.say("info", f"session {session} {event.record.describe()}: its keyframes moved to frame "
                             f"'{node.builder.map.manifest.map_frame}', the next ones follow")
        elif event.kind == "updated":
            node.say("warning", f"session {session} alignment {event.text}; the next keyframes follow it")
        elif event.kind == "disagrees":
            node.say("warning", f"session {session}: {event.text}", throttle=10.0)
        elif event.kind == "collected" and len(self.tracker.aligner.estimates) >= 2 * MIN_ALIGNMENT_CLOSURES:
            node.say("warning", f"session {session} not aligned yet: {event.text}", throttle=30.0)

    def _on_path(self, msg: Path) -> None:
        """The back end's optimised trajectory: every keyframe it reaches takes its pose."""
        node: Any = self
        builder = node.builder
        if builder is None or not msg.poses:
            return
        where = f"path on '{node.cfg.optimized_path_topic}'"
        stamps = [stamp_to_sec(p.header.stamp) for p in msg.poses]
        poses = [pose_tuple(p.pose) for p in msg.poses]
        frame = msg.header.frame_id or builder.map.manifest.map_frame
        try:
            with node._lock:
                vmap = builder.map
                r = reanchor(vmap.keyframes, stamps, poses, node.cfg.max_path_gap, where)
                if frame != vmap.manifest.map_frame and r.unreached:
                    raise VprError(f"{where} is in frame '{frame}' but reaches only {len(r.poses)} of the "
                                   f"{len(vmap)} keyframes of a map in frame '{vmap.manifest.map_frame}': not applied "
                                   "(the keyframes it misses would be left in another frame)")
                vmap.update_poses(r.poses, frame)
        except VprError as exc:
            node._error(str(exc))
            return
        self.path_updates += 1
        self.path_unreached = r.unreached
        if r.unreached:
            node.say("warning", f"{where}: {r.unreached} keyframe(s) outside it keep their pose", throttle=30.0)

    def _slam_diagnostics(self) -> dict[str, Any]:
        node: Any = self
        b = node.builder
        record = b.map.session_record(b.session) if b is not None and (b.session or len(b.map)) else None
        return {"loop_closures": self.loop_closures, "loop_closures_with_earlier_sessions": self.loops_prior,
                "loop_closures_refused_by_geometry": self.loops_refused,
                "session_alignment": record.describe() if record is not None else "",
                "session_closures_not_used_for_alignment": self.tracker.ignored if self.tracker is not None else 0,
                "path_updates": self.path_updates, "keyframes_outside_path": self.path_unreached}
