"""The nodes over real ROS 2 topics (rclpy from the pip wheels, DDS on localhost)."""
from __future__ import annotations

import contextlib
import threading
import time

import cv2
import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402
from nav_msgs.msg import Odometry  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from vpr_ros.mapping.map_store import Keyframe, VprMap  # noqa: E402
from vpr_ros.ros.conversions import pose_msg, rgb_to_image, sec_to_stamp  # noqa: E402
from vpr_ros.ros.player import QueryPlayer  # noqa: E402

from conftest import HANG_GUARD_S, TINY_MODEL  # noqa: E402

pytestmark = pytest.mark.ros


def overrides(**values):
    model = {f"model.{k}": v for k, v in TINY_MODEL.items()}
    return [Parameter(k, value=v) for k, v in {**model, **values}.items()]


class Spinning:
    """Spin a node on its own executor thread for the duration of a test."""

    def __init__(self, node):
        self.node = node
        self.ex = MultiThreadedExecutor(num_threads=2)
        self.ex.add_node(node)
        self.thread = threading.Thread(target=self.ex.spin, daemon=True)
        self.thread.start()

    def stop(self):
        self.ex.shutdown()
        self.node.destroy_node()


@pytest.fixture()
def localizer(rclpy_context, built_map):
    from vpr_ros.ros.localizer_node import LocalizerNode

    node = LocalizerNode(parameter_overrides=overrides(
        map_dir=str(built_map), camera_topics=["cam0/image"], qos="reliable", top_k=3,
        score_threshold=0.0, temporal_consistency=2, diagnostics_period=0.2,
        **{"verification.loop_closures": "none"}))  # these views have no camera model: rules only
    s = Spinning(node)
    yield node
    s.stop()


def until(condition, timeout=HANG_GUARD_S, spin=None):
    """Wait for ``condition()`` (spinning ``spin`` if given), at most ``timeout`` s (a hang guard,
    not a budget); returns it."""
    end = time.monotonic() + timeout
    while not condition() and time.monotonic() < end:
        if spin is not None:
            rclpy.spin_once(spin, timeout_sec=0.02)
        else:
            threading.Event().wait(0.02)
    return bool(condition())


def wait_until_matched(node, *publishers, timeout=HANG_GUARD_S):
    """Spin ``node`` until every publisher has a subscriber (DDS discovery done)."""
    return until(lambda: all(p.get_subscription_count() > 0 for p in publishers), timeout, spin=node)


@contextlib.contextmanager
def feeding_map_builder(map_dir, feeder, pose_type, pose_channel, pose_qos=None, **params):
    """A spinning MapBuilderNode writing ``map_dir`` and a feeder node whose image and pose
    publishers are matched; yields (node, feeder node, image publisher, pose publisher)."""
    from vpr_ros.ros.map_builder_node import MapBuilderNode

    node = MapBuilderNode(parameter_overrides=overrides(
        map_dir=str(map_dir), qos="reliable", autosave_period=0.0, **params))
    s = Spinning(node)
    try:
        client = rclpy.create_node(feeder)
        pub_img = client.create_publisher(Image, "image", 10)
        pub_pose = client.create_publisher(pose_type, pose_channel, pose_qos or 100)
        assert wait_until_matched(client, pub_img, pub_pose)
        yield node, client, pub_img, pub_pose
        client.destroy_node()
    finally:
        s.stop()


def last_diag(player, name="localizer"):
    player.log.diagnostics.clear()
    player.spin_until(lambda: any(s.name.endswith(name) for a in player.log.diagnostics for s in a.status), HANG_GUARD_S)
    st = [s for a in player.log.diagnostics for s in a.status if s.name.endswith(name)][-1]
    return st, {kv.key: kv.value for kv in st.values}


def odometry(t, pose, frame="odom"):
    od = Odometry()
    od.header.stamp = sec_to_stamp(t)
    od.header.frame_id = frame
    od.pose.pose = pose_msg(pose)
    return od


def test_localizer_answers_image_frames(localizer, traversals):
    first, second = traversals
    p = QueryPlayer("cam0/image")
    assert p.wait_for_localizer(HANG_GUARD_S)
    assert p.spin_until(lambda: p.log.keyframes is not None, HANG_GUARD_S)
    assert len(p.log.keyframes.poses) == len(first.images)
    assert p.log.keyframes.poses[3].header.stamp == sec_to_stamp(first.stamps[3])
    assert p.pub_compressed.get_subscription_count() == 0  # one transport per camera (raw here)

    stamps = [500.0 + i for i in range(4)]
    assert p.play(first.images[:4], stamps, timeout=HANG_GUARD_S) == 4
    for i, t in enumerate(stamps):
        rows = p.log.tables[t]
        assert [r["rank"] for r in rows] == [0, 1, 2]
        assert rows[0]["db_id"] == i and rows[0]["score"] > 0.999
        assert rows[0]["t_db"] == pytest.approx(first.stamps[i])
        assert (rows[0]["x"], rows[0]["qw"]) == pytest.approx((first.poses[i][0], first.poses[i][6]))
        pose = p.log.poses[t]
        assert pose.header.frame_id == "map" and pose.pose.pose.position.x == pytest.approx(first.poses[i][0])
        assert pose.pose.covariance[0] > 0 and pose.pose.covariance[35] > 0
        assert len(p.log.matches[t].poses) == 3
    # consecutive agreeing matches far in time -> LIO-SAM style [t_query, t_match]
    assert p.spin_until(lambda: len(p.log.loop_closures) >= 1, HANG_GUARD_S)
    tq, tm = p.log.loop_closures[0]
    assert tq in stamps and tm in first.stamps and tq - tm >= 30
    assert {r["status"] for r in p.log.loop_table} <= {-1.0, 0.0, 1.0}
    p.destroy_node()


def test_compressed_transport_subscribes_only_the_compressed_topic(rclpy_context, built_map, traversals):
    from vpr_ros.ros.localizer_node import LocalizerNode

    node = LocalizerNode(parameter_overrides=overrides(map_dir=str(built_map), qos="reliable",
                                                      transport="compressed", score_threshold=0.0))
    s = Spinning(node)
    try:
        p = QueryPlayer("image")
        assert until(lambda: p.pub_compressed.get_subscription_count() > 0, spin=p)
        assert p.pub.get_subscription_count() == 0  # raw frames are not also received
        ok, jpg = cv2.imencode(".jpg", np.ascontiguousarray(traversals[0].images[5][:, :, ::-1]))
        msg = CompressedImage(format="jpeg", data=jpg.tobytes())
        msg.header.stamp = sec_to_stamp(600.0)
        p.send_raw(msg)
        assert p.spin_until(lambda: 600.0 in p.log.tables, HANG_GUARD_S)
        assert p.log.tables[600.0][0]["db_id"] == 5
        assert node.slots.received == 1 and node.slots.dropped == 0
        p.destroy_node()
    finally:
        s.stop()


def test_bad_frames_are_logged_and_the_node_keeps_running(localizer, traversals):
    p = QueryPlayer("cam0/image")
    assert p.wait_for_localizer(HANG_GUARD_S)
    bad = Image(height=4, width=4, encoding="yuv_weird", step=12, data=b"\0" * 48)
    empty = Image(height=0, width=0, encoding="rgb8", step=0, data=b"")
    nan = Image(height=4, width=4, encoding="32FC1", step=16, data=b"\0" * 64)
    for i, m in enumerate((bad, empty, nan)):
        m.header.stamp = sec_to_stamp(700.0 + i)
        p.send_raw(m)
        # one at a time (the node keeps only the newest frame): wait until this one failed
        assert p.spin_until(lambda n=i: localizer.counters.errors >= n + 1, HANG_GUARD_S)
    assert p.play([traversals[0].images[2]], [710.0], timeout=HANG_GUARD_S) == 1  # still alive
    assert p.log.tables[710.0][0]["db_id"] == 2
    st, vals = last_diag(p)
    assert st.level == DiagnosticStatus.WARN and int(vals["frames_failed"]) >= 3
    assert "32FC1" in localizer.counters.last_error
    assert not {700.0, 701.0, 702.0} & set(p.log.tables)
    p.destroy_node()


def test_without_a_map_the_node_reports_error_and_survives(rclpy_context, tmp_path, traversals):
    from vpr_ros.ros.localizer_node import LocalizerNode

    node = LocalizerNode(parameter_overrides=overrides(map_dir=str(tmp_path / "none"), qos="reliable",
                                                      diagnostics_period=0.2))
    s = Spinning(node)
    try:
        p = QueryPlayer("image")
        assert p.spin_until(lambda: p.pub.get_subscription_count() > 0, HANG_GUARD_S)
        p.send(traversals[0].images[0], 1.0)
        assert p.spin_until(lambda: node.counters.errors >= 1, HANG_GUARD_S)
        st, vals = last_diag(p)
        assert st.level == DiagnosticStatus.ERROR and "not a map directory" in st.message
        assert "no map loaded" in node.counters.last_error
        p.destroy_node()
    finally:
        s.stop()


def test_diagnostics_are_absolute_under_a_namespace(rclpy_context, built_map):
    from diagnostic_msgs.msg import DiagnosticArray

    from vpr_ros.ros.localizer_node import LocalizerNode

    node = LocalizerNode(namespace="robot1", parameter_overrides=overrides(map_dir=str(built_map),
                                                                          diagnostics_period=0.2))
    s = Spinning(node)
    try:
        names = [n for n, _ in node.get_publisher_names_and_types_by_node("localizer", "/robot1")]
        assert "/diagnostics" in names and "/robot1/vpr/match_table" in names
        assert "/robot1/initialpose" in names  # where AMCL in robot1 listens: relative by default
        got = []
        client = rclpy.create_node("diag_listener")
        client.create_subscription(DiagnosticArray, "/diagnostics", got.append, 10)
        # the status is named after the node's full name: localizers in two namespaces never share one
        assert until(lambda: any(st.name == "/robot1/localizer: localizer" for m in got for st in m.status), spin=client)
        st = next(st for m in got for st in m.status if st.name == "/robot1/localizer: localizer")
        assert {kv.key: kv.value for kv in st.values}["lifecycle_state"] == "unmanaged"
        # which backend runs on which device, and why, once the model is open
        assert until(lambda: any(kv.key == "backend_selection" and "onnxruntime on cpu" in kv.value
                                 for m in got for st in m.status for kv in st.values), spin=client)
        client.destroy_node()
    finally:
        s.stop()


def test_map_builder_pairs_images_with_sparse_odometry(rclpy_context, tmp_path, traversals):
    """Odometry at 1 Hz from a best-effort publisher, images at 4 Hz published before the odometry
    that follows them: every image waits, is interpolated, and the map is in the odometry's frame."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    map_dir = tmp_path / "live_map"
    best_effort = QoSProfile(depth=50, reliability=ReliabilityPolicy.BEST_EFFORT)
    with feeding_map_builder(map_dir, "test_feeder", Odometry, "odom", pose_qos=best_effort, max_pose_wait=30.0,
                             **{"keyframes.min_distance": 0.2}) as (node, client, pub_img, pub_odom):
        first = traversals[0]
        x = lambda t: 2.0 * (t - 100.0)  # noqa: E731 - 2 m/s along x
        pub_odom.publish(odometry(100.0, (x(100.0), 0, 0, 0, 0, 0, 1)))
        assert until(lambda: len(node._track) == 1)
        stamps = [100.0 + 0.25 * k for k in range(1, 9)]  # 100.25 ... 102.0
        for k, t in enumerate(stamps):
            pub_img.publish(rgb_to_image(first.images[k], t))
            if t in (101.0, 102.0):
                assert until(lambda n=k: node.images == n + 1)  # the image is there before its odometry
                pub_odom.publish(odometry(t, (x(t), 0, 0, 0, 0, 0, 1)))
        early = rgb_to_image(first.images[0], 50.0)  # long before any odometry: skipped
        pub_img.publish(early)
        assert until(lambda: node.keyframes == 8 and node.skipped_no_pose == 1)
        assert node.interpolated >= 6
    vmap = VprMap.load(map_dir)  # saved by the node on destruction
    assert [round(k.pose[0], 6) for k in vmap.keyframes] == [x(t) for t in stamps]
    assert vmap.manifest.map_frame == "odom"

    # Nav2 frames: a localizer on this map publishes in 'odom' (its default map_frame '' is the
    # map's frame); one told map_frame 'map' refuses the map instead of mislabelling its poses
    from vpr_ros.ros.localizer_node import LocalizerNode

    loc = LocalizerNode(parameter_overrides=overrides(map_dir=str(map_dir), qos="reliable", score_threshold=0.0))
    s = Spinning(loc)
    try:
        p = QueryPlayer("image")
        assert p.wait_for_localizer(HANG_GUARD_S)
        assert p.play([first.images[2]], [900.0], timeout=HANG_GUARD_S) == 1
        pose = p.log.poses[900.0]
        assert pose.header.frame_id == "odom" and p.log.matches[900.0].header.frame_id == "odom"
        cov = pose.pose.covariance
        assert cov[0] >= 0.05 ** 2 and cov[35] >= 0.02 ** 2  # the documented floors
        p.destroy_node()
    finally:
        s.stop()
    strict = LocalizerNode(parameter_overrides=overrides(map_dir=str(map_dir), map_frame="map", diagnostics_period=0.2))
    s = Spinning(strict)
    try:
        p = QueryPlayer("image")
        st, _ = last_diag(p)
        assert st.level == DiagnosticStatus.ERROR and "frame 'odom' but map_frame is 'map'" in st.message, st.message
        assert strict.localizer is None
        p.destroy_node()
    finally:
        s.stop()


def test_map_builder_node_with_navsatfix_poses(rclpy_context, tmp_path, traversals):
    from sensor_msgs.msg import NavSatFix, NavSatStatus

    map_dir = tmp_path / "gps_map"
    with feeding_map_builder(map_dir, "test_gps_feeder", NavSatFix, "fix", pose_source="navsatfix", pose_topic="fix",
                             max_pose_wait=30.0, **{"keyframes.min_distance": 2.5}) as (node, _, pub_img, pub_fix):
        first = traversals[0]
        lat0, lon0 = 48.137, 11.575
        for i, (img, t) in enumerate(zip(first.images[:8], first.stamps)):
            # 1 m north per frame: one degree of latitude is about 111,200 m at 48.1 deg N (WGS84 meridian arc)
            fix = NavSatFix(latitude=lat0 + i * 1.0 / 111_193.0, longitude=lon0, altitude=520.0)
            fix.status.status = NavSatStatus.STATUS_FIX
            fix.header.stamp = sec_to_stamp(t)
            pub_fix.publish(fix)
            pub_img.publish(rgb_to_image(img, t))
        assert until(lambda: node.images == 8 and not node._waiting)
        assert until(lambda: node.keyframes >= 3)
        node.save()
        vmap = VprMap.load(map_dir)
        norths = [round(k.pose[1], 2) for k in vmap.keyframes]
        assert norths == [0.0, 3.0, 6.0]  # metres north of the first fix, a keyframe every >= 2.5 m
        assert vmap.keyframes[1].gps[0] == pytest.approx(lat0 + 3 / 111_193.0) and vmap.keyframes[0].gps[2] == 520.0


def test_tf_pose_source_needs_tf2_ros(rclpy_context, tmp_path):
    """tf2_ros has no pip wheel: selecting TF here must give a clear configuration error. (With a ROS 2
    installation the same node looks up map_frame -> base_frame; not testable in this environment.)"""
    try:
        import tf2_ros  # noqa: F401
        pytest.skip("tf2_ros is installed: the TF path would be used")
    except ImportError:
        pass
    from vpr_ros.errors import ConfigError
    from vpr_ros.ros.map_builder_node import MapBuilderNode

    with pytest.raises(ConfigError, match="pose_source 'tf' needs tf2_ros"):
        MapBuilderNode(parameter_overrides=overrides(map_dir=str(tmp_path / "m"), pose_source="tf"))


def test_markers_and_debug_image_only_when_watched(localizer, traversals):
    from visualization_msgs.msg import Marker, MarkerArray

    p = QueryPlayer("cam0/image")
    assert p.wait_for_localizer(HANG_GUARD_S)
    assert p.play([traversals[0].images[4]], [800.0], timeout=HANG_GUARD_S) == 1
    assert localizer.counters.debug_images == 0  # nobody subscribed: not built
    got: dict = {"markers": [], "debug": []}
    p.create_subscription(MarkerArray, "vpr/markers", got["markers"].append, 10)
    p.create_subscription(Image, "vpr/debug_image", got["debug"].append, 10)
    assert p.spin_until(lambda: localizer.pub_debug.get_subscription_count() > 0 and
                        localizer.pub_markers.get_subscription_count() > 0, HANG_GUARD_S)
    assert p.play([traversals[0].images[6]], [801.0], timeout=HANG_GUARD_S) == 1
    assert p.spin_until(lambda: got["debug"] and any(len(m.markers) > 1 for m in got["markers"]), HANG_GUARD_S)
    dbg = got["debug"][-1]
    assert dbg.encoding == "rgb8" and dbg.height == 240 and dbg.width > dbg.height
    assert localizer.counters.debug_images >= 1
    matches = next(m for m in got["markers"] if len(m.markers) > 1).markers
    spheres = [m for m in matches if m.type == Marker.SPHERE]
    assert len(spheres) == 3 and spheres[0].ns == "matches"
    text = next(m for m in matches if m.type == Marker.TEXT_VIEW_FACING)
    assert text.text.startswith("6: ")
    p.destroy_node()


def call_trigger(client, name, timeout=HANG_GUARD_S):
    cli = client.create_client(Trigger, name)
    assert cli.wait_for_service(timeout_sec=HANG_GUARD_S), name
    fut = cli.call_async(Trigger.Request())
    rclpy.spin_until_future_complete(client, fut, timeout_sec=timeout)
    return fut.result()


def test_localizer_never_writes_a_map_and_reloads_a_newer_one(localizer, built_map, tiny_backend, traversals):
    """The trial's case: another writer extended the map after the localizer loaded it; the
    localizer's save must not put the older map back (it never writes a map at all)."""
    from vpr_ros.mapping.builder import MapBuilder
    from vpr_ros.config import KeyframeConfig

    client = rclpy.create_node("test_service_client")
    try:
        before = VprMap.load(built_map)
        res = call_trigger(client, "vpr/save_map")
        assert res.success and "nothing to save" in res.message, res.message
        assert VprMap.load(built_map).manifest.generation == before.manifest.generation  # nothing written
        w = VprMap.open_writer(built_map)  # e.g. vpr_ros_build_map --append, or a map builder
        b = MapBuilder(tiny_backend, KeyframeConfig(), base=w)
        desc, feats = b.encode([traversals[1].images[0]])
        b.add_encoded(desc, [Keyframe(5000.0, tuple(traversals[1].poses[0]))], feats)
        w.close()
        res = call_trigger(client, "vpr/save_map")
        assert not res.success and "newer than the loaded one" in res.message and "reload_map" in res.message
        assert len(VprMap.load(built_map)) == len(before) + 1  # the new keyframe is still there
        res = call_trigger(client, "vpr/reload_map")
        assert res.success and f"{len(before) + 1} keyframes" in res.message
        assert call_trigger(client, "vpr/save_map").success
    finally:
        client.destroy_node()


def test_two_cameras_and_the_rich_loop_closure_table(rclpy_context, built_map, traversals):
    from vpr_ros.ros.localizer_node import LocalizerNode

    node = LocalizerNode(parameter_overrides=overrides(
        map_dir=str(built_map), camera_topics=["front/image", "rear/image"], qos="reliable", top_k=2,
        score_threshold=0.0, temporal_consistency=1, **{"verification.loop_closures": "none"}))
    s = Spinning(node)
    try:
        front, rear = QueryPlayer("front/image", name="front_player"), QueryPlayer("rear/image", name="rear_player")
        assert front.wait_for_localizer(HANG_GUARD_S) and rear.wait_for_localizer(HANG_GUARD_S)
        assert front.play([traversals[0].images[3]], [900.0], timeout=HANG_GUARD_S) == 1
        assert rear.play([traversals[0].images[8]], [901.0], timeout=HANG_GUARD_S) == 1
        assert front.log.tables[900.0][0]["db_id"] == 3 and rear.log.tables[901.0][0]["db_id"] == 8
        assert front.spin_until(lambda: len(front.log.loop_table) >= 2, HANG_GUARD_S)
        row = front.log.loop_table[0]
        assert (row["rel_x"], row["rel_qw"]) == (0.0, 1.0) and row["cov_x"] > 0 and row["cov_yaw"] > 0
        front.destroy_node()
        rear.destroy_node()
    finally:
        s.stop()


class _Tf2StandIn:
    """A stand-in for ``tf2_ros`` (a true boundary here: it has no pip wheel), with the real API
    the node uses: ``Buffer()``, ``TransformListener(buffer, node)`` and
    ``Buffer.lookup_transform(target_frame, source_frame, time, timeout=...)`` returning a
    geometry_msgs/TransformStamped and raising LookupException / ExtrapolationException. Its
    listener is fed over a real rclpy topic (TransformStamped on ``tf_standin``, since
    tf2_msgs/TFMessage has no wheel either); lookups interpolate the translation linearly."""

    class LookupException(Exception):
        pass

    class ExtrapolationException(Exception):
        pass

    class Buffer:
        def __init__(self, cache_time=None, node=None):
            self.frames: dict[tuple[str, str], list] = {}
            self.lookups: list[tuple[str, str, float]] = []

        def set_transform(self, msg, authority):
            key = (msg.header.frame_id, msg.child_frame_id)
            self.frames.setdefault(key, []).append((msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9, msg))
            self.frames[key].sort(key=lambda e: e[0])

        def lookup_transform(self, target_frame, source_frame, time, timeout=None):
            from geometry_msgs.msg import TransformStamped

            t = time.nanoseconds * 1e-9
            self.lookups.append((target_frame, source_frame, t))
            series = self.frames.get((target_frame, source_frame))
            if not series:
                raise _Tf2StandIn.LookupException(f"{target_frame} -> {source_frame} unknown")
            if not series[0][0] <= t <= series[-1][0]:
                raise _Tf2StandIn.ExtrapolationException(f"{t} outside [{series[0][0]}, {series[-1][0]}]")
            after = next(i for i, (s, _) in enumerate(series) if s >= t)
            (t0, a), (t1, b) = series[max(0, after - 1)], series[after]
            w = 0.0 if t1 == t0 else (t - t0) / (t1 - t0)
            out = TransformStamped()
            out.header.frame_id, out.child_frame_id = target_frame, source_frame
            for axis in ("x", "y", "z"):
                pa, pb = getattr(a.transform.translation, axis), getattr(b.transform.translation, axis)
                setattr(out.transform.translation, axis, pa + w * (pb - pa))
            out.transform.rotation = (a if w < 0.5 else b).transform.rotation
            return out

    class TransformListener:
        """Like tf2_ros's: ``spin_thread=True`` spins ``node`` on a thread of its own."""

        def __init__(self, buffer, node, *, spin_thread=False, qos=None, static_qos=None):
            from geometry_msgs.msg import TransformStamped
            from rclpy.executors import SingleThreadedExecutor

            self.sub = node.create_subscription(TransformStamped, "tf_standin",
                                                lambda m: buffer.set_transform(m, "stand-in"), 100)
            self.node = node
            if spin_thread:
                from rclpy.executors import ExternalShutdownException

                self.executor = SingleThreadedExecutor(context=node.context)
                self.executor.add_node(node)

                def run():
                    try:
                        self.executor.spin()
                    except ExternalShutdownException:
                        pass

                threading.Thread(target=run, daemon=True).start()

        def unregister(self):
            self.node.destroy_subscription(self.sub)


def test_map_builder_tf_pose_source_with_a_tf2_stand_in(rclpy_context, tmp_path, traversals, monkeypatch):
    """pose_source 'tf': each image's pose is the map -> base_link transform at its stamp; images
    without a transform (before the first, or other frames) are skipped and counted."""
    import sys
    import types

    from geometry_msgs.msg import TransformStamped

    fake = types.ModuleType("tf2_ros")
    for name in ("Buffer", "TransformListener", "LookupException", "ExtrapolationException"):
        setattr(fake, name, getattr(_Tf2StandIn, name))
    monkeypatch.setitem(sys.modules, "tf2_ros", fake)
    map_dir = tmp_path / "tf_map"
    with feeding_map_builder(map_dir, "test_tf_feeder", TransformStamped, "tf_standin", pose_source="tf",
                             map_frame="world", base_frame="robot", max_pose_wait=0.5,
                             **{"keyframes.min_distance": 1.4}) as (node, _, pub_img, pub_tf):
        first = traversals[0]
        t0 = first.stamps[0]
        for i in range(12):  # the robot moves 1 m along x per second, transforms at 4 Hz
            tr = TransformStamped()
            tr.header.frame_id, tr.child_frame_id = "world", "robot"
            tr.header.stamp = sec_to_stamp(t0 + 0.25 * i + 0.1)
            tr.transform.translation.x = 0.25 * i + 0.1
            tr.transform.rotation.w = 1.0
            pub_tf.publish(tr)
        buffer = node._tf
        assert until(lambda: sum(len(v) for v in buffer.frames.values()) == 12)
        images = [(t0, first.images[0])]  # before the first transform: no pose
        images += [(t0 + 0.5 * k + 0.35, first.images[k]) for k in range(1, 6)]  # x = 0.85, 1.35, ... 2.85
        for t, img in images:
            pub_img.publish(rgb_to_image(img, t))
        assert until(lambda: node.images == len(images) and not node._waiting and node.skipped_no_pose == 1)
        assert until(lambda: node.keyframes == 2 and node._queue.unfinished_tasks == 0)
        node.save()
        vmap = VprMap.load(map_dir)
        xs = [round(k.pose[0], 3) for k in vmap.keyframes]
        assert xs == [0.85, 2.35]  # interpolated transforms; a keyframe every >= 1.4 m
        assert node.skipped_no_pose == 1
        assert {(a, b) for a, b, _ in node._tf.lookups} == {("world", "robot")}


def test_core_log_records_reach_the_node_logger():
    """The ROS-free core logs through ``logging``; a node forwards those records to its ROS logger."""
    import logging

    from vpr_ros.ros.node_base import CoreLogBridge

    class Node:
        def __init__(self) -> None:
            self.lines: list[tuple[str, str]] = []

        def say(self, level: str, text: str) -> None:
            self.lines.append((level, text))

    node = Node()
    bridge = CoreLogBridge(node)  # type: ignore[arg-type]
    log = logging.getLogger("vpr_ros.export.tensorrt")
    log.addHandler(bridge)
    log.setLevel(logging.INFO)
    try:
        log.info("TensorRT build: %s %d%%", "Building engine", 40)
        log.warning("slow")
    finally:
        log.removeHandler(bridge)
    assert node.lines == [("info", "[vpr_ros.export.tensorrt] TensorRT build: Building engine 40%"),
                          ("warning", "[vpr_ros.export.tensorrt] slow")]
