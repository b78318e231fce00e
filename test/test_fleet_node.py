"""Three fleet nodes (issue 35) in namespaces /robot_a, /robot_b, /robot_c over the default DDS on
localhost (real rclpy publishers and subscriptions), each following its own robot's map store as a
reader while a writer adds keyframes durably (as the map builder does); robot_c's map appears
later (a robot joining late). Rendered corridor drives give the images (real SIFT with depth, real
PnP); the global descriptors are synthetic place vectors (the exchange is under test here, not the
network). Closures are read from the nodes' real topics."""
from __future__ import annotations

import threading

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402

from conftest import HANG_GUARD_S  # noqa: E402
from test_fleet_peers import place_views  # noqa: E402
from test_nodes import until  # noqa: E402
from vpr_ros.config import VerificationConfig  # noqa: E402
from vpr_ros.demo.scene3d import Scene, corridor_traversals  # noqa: E402
from vpr_ros.geometry import planar_pose  # noqa: E402
from vpr_ros.mapping.map_store import Keyframe, ModelIdentity, VprMap  # noqa: E402
from vpr_ros.verification.verifier import Verifier  # noqa: E402

pytestmark = pytest.mark.ros
MODEL = ModelIdentity("fleet-model", "ab" * 32, 224, 2048)


def write_keyframes(map_dir, drive, positions, seed):  # type: ignore[no-untyped-def]
    """Add the drive's frames at ``positions`` to the map at ``map_dir`` (created if new), each
    keyframe committed on its own, with SIFT features and 3-D points."""
    v = Verifier(VerificationConfig(features="sift"))
    w = VprMap.open_writer(map_dir, MODEL, durable=True)
    try:
        w.manifest.local_features = "sift"
        x = place_views(positions, seed)
        for k, p in enumerate(positions):
            f = v.features(drive.images[p]).with_depth(drive.depths[p], drive.intrinsics)
            w.add(x[k:k + 1], [Keyframe(float(100 * seed + k), planar_pose(float(p), 0.0))], [f])
    finally:
        w.close()


def test_three_robots_close_loops_over_dds(rclpy_context, tmp_path):
    from vpr_ros.ros.fleet_node import CLOSURE_COLUMNS, FleetNode

    scene = Scene.corridor(length=20.0, seed=3)
    a_drive, b_drive = corridor_traversals(12, scene=scene, seed=3)
    _, c_drive = corridor_traversals(12, scene=scene, seed=8)
    maps = {r: tmp_path / r for r in ("robot_a", "robot_b", "robot_c")}
    write_keyframes(maps["robot_a"], a_drive, list(range(10)), 1)
    write_keyframes(maps["robot_b"], b_drive, [5, 6, 7, 8, 9, 10, 11], 2)

    def fleet(name: str, rid: int) -> FleetNode:
        return FleetNode(namespace=name, parameter_overrides=[
            Parameter("robot_id", value=rid), Parameter("map_dir", value=str(maps[name])),
            Parameter("bandwidth_bytes_per_s", value=200000.0), Parameter("poll_period", value=0.2),
            Parameter("features_timeout", value=3.0), Parameter("verification.features", value="sift")])

    nodes = [fleet("robot_a", 1), fleet("robot_b", 2), fleet("robot_c", 3)]
    listener = rclpy.create_node("closure_listener")
    rows: dict[str, list[list[float]]] = {n: [] for n in maps}
    for name in maps:
        listener.create_subscription(Float64MultiArray, f"/{name}/fleet/inter_robot_closures",
                                     lambda m, name=name: rows[name].append(list(m.data)), 10)
    ex = MultiThreadedExecutor(num_threads=4)
    for n in [*nodes, listener]:
        ex.add_node(n)
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            ex.spin_once(timeout_sec=0.05)

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    try:
        assert until(lambda: rows["robot_a"] and rows["robot_b"])  # a and b overlap at places 5..9
        assert nodes[2].peer is None and "not a map directory" in nodes[2].last_error
        write_keyframes(maps["robot_c"], c_drive, [0, 1, 2, 3, 4], 3)  # robot_c starts mapping
        assert until(lambda: any(r[3] == 3 for r in rows["robot_a"]) and rows["robot_c"], timeout=HANG_GUARD_S)
    finally:
        from vpr_ros.ros.node_main import stop_executor

        stop.set()
        spinner.join(HANG_GUARD_S)
        stop_executor(ex)  # the callbacks in flight finish before the executor and the nodes go
        for n in [*nodes, listener]:
            n.destroy_node()
    col = {c: i for i, c in enumerate(CLOSURE_COLUMNS)}
    positions = {1: list(range(10)), 2: [5, 6, 7, 8, 9, 10, 11], 3: [0, 1, 2, 3, 4]}
    for name, got in rows.items():
        for r in got:
            own, other = int(r[col["robot_id"]]), int(r[col["other_robot_id"]])
            assert positions[own][int(r[col["keyframe"]])] == positions[other][int(r[col["other_keyframe"]])]
            assert len(r) == len(CLOSURE_COLUMNS) and r[col["inliers"]] >= 12
            cov = np.array(r[col["cov00"]:col["cov55"] + 1]).reshape(6, 6)
            assert np.allclose(cov, cov.T) and (np.diag(cov) > 0).all()
    pairs = {(int(r[col["robot_id"]]), int(r[col["other_robot_id"]])) for got in rows.values() for r in got}
    assert {(1, 2), (2, 1), (1, 3), (3, 1)} <= pairs and not pairs & {(2, 3), (3, 2)}
    stats = {n.robot.name: n.peer.stats for n in nodes}
    assert all(s.sent_bytes["descriptors"] > 0 for s in stats.values())
