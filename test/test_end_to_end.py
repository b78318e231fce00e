"""End to end over real ROS 2 topics: a map built from one rosbag2 recording, the second
recording played to the localizer node, every published message checked field by field."""
from __future__ import annotations

import threading

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rosbags.highlevel import AnyReader  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from vpr_ros.cli.build_map import main as build_map  # noqa: E402
from vpr_ros.mapping.map_store import VprMap  # noqa: E402
from vpr_ros.ros.conversions import stamp_to_sec  # noqa: E402
from vpr_ros.ros.player import QueryPlayer  # noqa: E402

from conftest import HANG_GUARD_S, TINY_MODEL  # noqa: E402
from test_bags import params, write_bag  # noqa: E402,F401 - the params fixture is used by name

pytestmark = pytest.mark.ros


def start_localizer(map_dir, **extra):  # type: ignore[no-untyped-def]
    from vpr_ros.ros.localizer_node import LocalizerNode

    values = {**{f"model.{k}": v for k, v in TINY_MODEL.items()}, "map_dir": str(map_dir), "qos": "reliable",
              "diagnostics_period": 0.2, **extra}
    node = LocalizerNode(parameter_overrides=[Parameter(k, value=v) for k, v in values.items()])
    ex = MultiThreadedExecutor(num_threads=2)
    ex.add_node(node)
    threading.Thread(target=ex.spin, daemon=True).start()
    return node, ex


def bag_images(bag):  # type: ignore[no-untyped-def]
    """sensor_msgs/Image messages (rclpy) from a rosbag2 recording, in order."""
    out = []
    with AnyReader([bag]) as reader:
        conns = [c for c in reader.connections if c.topic == "/camera/image_raw"]
        for conn, _, raw in reader.messages(connections=conns):
            m = reader.deserialize(raw, conn.msgtype)
            img = Image(height=m.height, width=m.width, encoding=m.encoding, is_bigendian=m.is_bigendian,
                        step=m.step, data=bytes(m.data))
            img.header.frame_id = m.header.frame_id
            img.header.stamp.sec, img.header.stamp.nanosec = m.header.stamp.sec, m.header.stamp.nanosec
            out.append(img)
    return out


def test_bag_to_map_to_localizer_messages_field_by_field(rclpy_context, tmp_path, traversals, params):
    bag1 = write_bag(tmp_path / "traversal1", traversals[0])
    bag2 = write_bag(tmp_path / "traversal2", traversals[1])
    p = tmp_path / "every_frame.yaml"
    p.write_text(open(params).read().replace("keyframes.min_distance: 1.5", "keyframes.min_distance: 0.5"))
    assert build_map([str(bag1), "--map-dir", str(tmp_path / "map"), "--image-topic", "/camera/image_raw",
                      "--pose-topic", "/odom", "--params-file", str(p)]) == 0
    vmap = VprMap.load(tmp_path / "map")
    assert len(vmap) == len(traversals[0].images)
    assert vmap.manifest.map_frame == "odom"  # the bag's odometry frame: what the localizer publishes in
    node, ex = start_localizer(tmp_path / "map", top_k=3, score_threshold=0.0, temporal_consistency=2,
                               **{"verification.loop_closures": "none"},  # the bag has no CameraInfo
                               consistency_window=24)
    try:
        player = QueryPlayer("image")
        assert player.wait_for_localizer(HANG_GUARD_S)
        assert player.spin_until(lambda: player.log.keyframes is not None, HANG_GUARD_S)
        path = player.log.keyframes
        assert path.header.frame_id == "odom" and len(path.poses) == len(vmap)
        for ps, kf in zip(path.poses, vmap.keyframes):
            assert (ps.pose.position.x, ps.pose.orientation.w) == pytest.approx((kf.pose[0], kf.pose[6]))
            assert stamp_to_sec(ps.header.stamp) == pytest.approx(kf.stamp, abs=1e-6)
        msgs = bag_images(bag2)
        stamps = [round(stamp_to_sec(m.header.stamp), 6) for m in msgs]
        for m, t in zip(msgs, stamps):
            player.send_raw(m)
            assert player.spin_until(lambda t=t: t in player.log.tables, HANG_GUARD_S), t
        player.spin_until(lambda: False, 0.5)
        for m, t in zip(msgs, stamps):
            rows = player.log.tables[t]
            assert [r["rank"] for r in rows] == [0, 1, 2]
            assert all(r["t_query"] == pytest.approx(t, abs=1e-6) for r in rows)
            # ordered by the local re-ranking score (geometric inliers), then by cosine
            keys = [(r["local_score"], r["score"]) for r in rows]
            assert keys == sorted(keys, reverse=True)
            for r in rows:
                kf = vmap.keyframes[int(r["db_id"])]
                assert r["t_db"] == pytest.approx(kf.stamp, abs=1e-6)
                assert [r[c] for c in ("x", "y", "z", "qx", "qy", "qz", "qw")] == pytest.approx(list(kf.pose))
                assert r["verified"] in (0.0, 1.0)
            pose = player.log.poses[t]
            assert pose.header.stamp == m.header.stamp and pose.header.frame_id == "odom"
            top = vmap.keyframes[int(rows[0]["db_id"])]
            assert pose.pose.pose.position.x == pytest.approx(top.pose[0])
            cov = np.array(pose.pose.covariance).reshape(6, 6)
            assert (np.diag(cov) > 0).all() and np.count_nonzero(cov - np.diag(np.diag(cov))) == 0
            arr = player.log.matches[t]
            assert arr.header.stamp == m.header.stamp and len(arr.poses) == 3
            assert [ps.position.x for ps in arr.poses] == pytest.approx([r["x"] for r in rows])
        closures = player.log.loop_closures
        assert closures, "consecutive revisits must produce loop closures"
        map_stamps = {round(k.stamp, 6) for k in vmap.keyframes}
        for tq, tm in closures:
            assert round(tq, 6) in stamps and round(tm, 6) in map_stamps and tq - tm >= 30.0
        times = [tq for tq, _ in closures]
        assert all(b - a >= 1.0 for a, b in zip(times, times[1:]))  # at most 1 Hz (query time)
        verified = {(round(r["t_query"], 6), round(r["t_match"], 6)) for r in player.log.loop_table
                    if r["status"] == 1.0}
        assert {(round(a, 6), round(b, 6)) for a, b in closures} == verified
        assert {r["status"] for r in player.log.loop_table} <= {-1.0, 0.0, 1.0}
        player.destroy_node()
    finally:
        ex.shutdown()
        node.destroy_node()


@pytest.mark.torch
def test_map_from_another_model_is_reported_and_the_node_keeps_running(rclpy_context, tmp_path, traversals, params):
    bag1 = write_bag(tmp_path / "t1", traversals[0])
    other = tmp_path / "other.yaml"
    # another model (seed 99), described with the torch backend (no ONNX export of a second model)
    other.write_text(open(params).read().replace(f"model.seed: {TINY_MODEL['seed']}", "model.seed: 99\n    backend: torch"))
    assert "model.seed: 99" in other.read_text() and "backend: torch" in other.read_text()
    assert build_map([str(bag1), "--map-dir", str(tmp_path / "map"), "--image-topic", "/camera/image_raw",
                      "--pose-topic", "/odom", "--params-file", str(other)]) == 0
    node, ex = start_localizer(tmp_path / "map")
    try:
        player = QueryPlayer("image")
        assert player.spin_until(lambda: player.pub.get_subscription_count() > 0, HANG_GUARD_S)
        player.send(traversals[1].images[0], 1000.0)
        assert player.spin_until(lambda: node.counters.errors >= 1, HANG_GUARD_S)
        player.log.diagnostics.clear()
        assert player.spin_until(lambda: bool(player.log.diagnostics), HANG_GUARD_S)
        st = player.log.diagnostics[-1].status[0]
        assert st.level == DiagnosticStatus.ERROR and "built by another model" in st.message
        assert "model_id" in st.message and "weights_sha256" in st.message
        player.send(traversals[1].images[1], 1001.0)  # still alive, still reporting
        assert player.spin_until(lambda: node.counters.errors >= 2, HANG_GUARD_S)
        player.destroy_node()
    finally:
        ex.shutdown()
        node.destroy_node()
