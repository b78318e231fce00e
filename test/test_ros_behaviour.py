"""The nodes under the real ROS 2 machinery: parameter services (what ``ros2 param set`` calls),
lifecycle services (what ``ros2 lifecycle set`` and launch call), map swaps while frames stream,
overload, and real signals to node processes."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
import yaml

rclpy = pytest.importorskip("rclpy")
from rcl_interfaces.msg import ParameterType  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.parameter_client import AsyncParameterClient  # noqa: E402

from vpr_ros.mapping.map_store import VprMap  # noqa: E402
from vpr_ros.ros.conversions import rgb_to_image  # noqa: E402
from vpr_ros.ros.player import QueryPlayer  # noqa: E402
from vpr_ros.runtime.base import DescriptorBackend  # noqa: E402

from conftest import HANG_GUARD_S, TINY_MODEL  # noqa: E402
from test_nodes import Spinning, last_diag, odometry, overrides, until  # noqa: E402

pytestmark = pytest.mark.ros


def _result(client_node, future, timeout=HANG_GUARD_S):
    rclpy.spin_until_future_complete(client_node, future, timeout_sec=timeout)
    assert future.done(), "no answer from the parameter service"
    return future.result()


def set_params(client_node, pc, **values):
    """Set parameters over the node's real set_parameters service; returns the results."""
    res = _result(client_node, pc.set_parameters([Parameter(k, value=v) for k, v in values.items()]))
    return res.results


@pytest.fixture()
def second_map(tmp_path, tiny_backend, traversals):
    """A different map for the same model: the second traversal (other stamps and poses)."""
    from vpr_ros.config import KeyframeConfig
    from vpr_ros.mapping.builder import MapBuilder, frames_from_lists

    second = traversals[1]
    b = MapBuilder(tiny_backend, KeyframeConfig(min_distance=0.5), source="test")
    b.add_many(frames_from_lists(second.images[:10], [3000.0 + t for t in second.stamps[:10]], second.poses[:10]))
    return b.save(tmp_path / "map_b")


def test_live_parameters_apply_validate_and_refuse(rclpy_context, built_map, second_map, tmp_path):
    from vpr_ros.ros.localizer_node import LocalizerNode

    node = LocalizerNode(parameter_overrides=overrides(map_dir=str(built_map), qos="reliable"))
    s = Spinning(node)
    client = rclpy.create_node("param_client")
    try:
        pc = AsyncParameterClient(client, "localizer")
        assert pc.wait_for_services(10.0)
        # descriptors: ranges and read-only flags, as `ros2 param describe` shows them
        desc = {d.name: d for d in _result(client, pc.describe_parameters(
            ["score_threshold", "top_k", "backend", "model.weights", "map_dir"])).descriptors}
        assert desc["score_threshold"].floating_point_range[0].from_value == -1.0
        assert desc["top_k"].integer_range[0].to_value == 1000 and desc["top_k"].type == ParameterType.PARAMETER_INTEGER
        assert desc["backend"].read_only and desc["model.weights"].read_only and not desc["map_dir"].read_only

        ok = set_params(client, pc, score_threshold=0.8, top_k=2, temporal_consistency=5)
        assert all(r.successful for r in ok)
        assert node.localizer.cfg.score_threshold == 0.8 and node.localizer.cfg.top_k == 2
        assert node.localizer.loops.consistency == 5  # the loop-closure rules changed too

        [r] = set_params(client, pc, top_k=0)  # out of the advertised range
        assert not r.successful and node.cfg.top_k == 2
        [r] = set_params(client, pc, backend="torch")
        assert not r.successful and "read-only" in r.reason.lower() or "read only" in r.reason.lower()
        [r] = set_params(client, pc, max_loop_closure_rate=-1.0)
        assert not r.successful
        [r] = set_params(client, pc, map_dir=str(tmp_path / "nowhere"))
        assert not r.successful and "not a map directory" in r.reason
        assert node.loaded_map_dir == str(built_map)

        [r] = set_params(client, pc, map_dir=str(second_map))  # accepted, then loaded
        assert r.successful, r.reason
        assert until(lambda: node.loaded_map_dir == str(second_map))
        assert len(node.localizer.map) == 10
    finally:
        client.destroy_node()
        s.stop()


def test_localizer_lifecycle_transitions(rclpy_context, built_map, traversals):
    from vpr_ros.ros.lifecycle_client import change_states, state_of
    from vpr_ros.ros.localizer_node import LocalizerLifecycleNode

    node = LocalizerLifecycleNode(parameter_overrides=overrides(map_dir=str(built_map), qos="reliable",
                                                               score_threshold=0.0))
    s = Spinning(node)
    try:
        p = QueryPlayer("image")
        assert state_of(p, "/localizer") == "unconfigured" and node.backend is None
        assert change_states(p, "/localizer", ["configure"]) == (True, "inactive")
        assert node.backend is not None and len(node.localizer.map) == 24  # model and map loaded
        assert p.pub.get_subscription_count() == 0  # not active: not listening
        assert change_states(p, "/localizer", ["activate"]) == (True, "active")
        assert p.wait_for_localizer(HANG_GUARD_S)
        assert p.play([traversals[0].images[3]], [42.0], timeout=HANG_GUARD_S) == 1
        assert p.log.tables[42.0][0]["db_id"] == 3
        assert change_states(p, "/localizer", ["deactivate"]) == (True, "inactive")
        assert until(lambda: p.pub.get_subscription_count() == 0, spin=p)
        assert change_states(p, "/localizer", ["cleanup"]) == (True, "unconfigured")
        assert node.backend is None and node.localizer is None
        assert change_states(p, "/localizer", ["configure", "activate"]) == (True, "active")  # again
        assert p.play([traversals[0].images[5]], [43.0], timeout=HANG_GUARD_S) == 1
        assert change_states(p, "/localizer", ["deactivate", "cleanup", "shutdown"]) == (True, "finalized")
        p.destroy_node()
    finally:
        s.stop()


def test_map_builder_lifecycle_saves_on_cleanup(rclpy_context, tmp_path, traversals):
    from sensor_msgs.msg import Image
    from nav_msgs.msg import Odometry

    from vpr_ros.ros.lifecycle_client import change_states
    from vpr_ros.ros.map_builder_node import MapBuilderLifecycleNode

    map_dir = tmp_path / "lc_map"
    node = MapBuilderLifecycleNode(parameter_overrides=overrides(
        map_dir=str(map_dir), qos="reliable", pose_qos="reliable", autosave_period=0.0, max_pose_wait=30.0))
    s = Spinning(node)
    client = rclpy.create_node("lc_feeder")
    try:
        pub_img = client.create_publisher(Image, "image", 10)
        pub_odom = client.create_publisher(Odometry, "odom", 50)
        assert change_states(client, "/map_builder", ["configure", "activate"]) == (True, "active")
        assert until(lambda: pub_img.get_subscription_count() and pub_odom.get_subscription_count(), spin=client)
        first = traversals[0]
        for k in range(5):
            pub_odom.publish(odometry(10.0 + k, first.poses[2 * k]))
            pub_img.publish(rgb_to_image(first.images[k], 10.0 + k))
        assert until(lambda: node.keyframes == 5)
        assert change_states(client, "/map_builder", ["deactivate", "cleanup"]) == (True, "unconfigured")
        assert len(VprMap.load(map_dir)) == 5 and node.builder is None
    finally:
        client.destroy_node()
        s.stop()


def test_map_swaps_while_streaming_are_consistent(rclpy_context, built_map, second_map, traversals):
    """Each answer comes from one map: its (db_id, t_db, pose) are a keyframe of map A or of map B,
    never a mix, while the map is swapped back and forth under a stream of frames."""
    from vpr_ros.ros.localizer_node import LocalizerNode

    maps = {str(built_map): VprMap.load(built_map), str(second_map): VprMap.load(second_map)}
    node = LocalizerNode(parameter_overrides=overrides(map_dir=str(built_map), qos="reliable",
                                                      score_threshold=0.0, top_k=3))
    s = Spinning(node)
    client = rclpy.create_node("swap_client")
    try:
        pc = AsyncParameterClient(client, "localizer")
        assert pc.wait_for_services(10.0)
        p = QueryPlayer("image")
        assert p.wait_for_localizer(HANG_GUARD_S)
        images = traversals[1].images
        for k in range(40):
            p.send(images[k % len(images)], 5000.0 + k)
            if k % 4 == 3:
                target = list(maps)[(k // 4) % 2]
                [r] = set_params(client, pc, map_dir=target)
                assert r.successful, r.reason
                assert until(lambda t=target: node.loaded_map_dir == t)
            p.spin_until(lambda n=k: 5000.0 + n in p.log.tables, 5.0)  # pacing: a dropped frame never answers
        assert until(lambda: node.slots.pending() == 0 and node.counters.processed + node.slots.dropped >= 40)
        p.spin_until(lambda: False, 0.5)
        assert node.counters.errors == 0, node.counters.last_error
        assert node.counters.map_loads >= 10 and len(p.log.tables) >= 10
        for rows in p.log.tables.values():
            sources = [m for m in maps.values()
                       if all(r["db_id"] < len(m) and m.keyframes[int(r["db_id"])].stamp == r["t_db"]
                              and m.keyframes[int(r["db_id"])].pose[0] == pytest.approx(r["x"]) for r in rows)]
            assert len(sources) == 1, rows
        p.destroy_node()
    finally:
        client.destroy_node()
        s.stop()


class GatedBackend(DescriptorBackend):
    """The real (tiny) network behind a gate the test opens: a model exactly as slow as the test
    wants, so that overload behaviour is checked by events, not by timing."""

    name = "gated"

    def __init__(self, inner: DescriptorBackend) -> None:
        super().__init__(inner.model_id, inner.weights_sha256, inner.weights_source, inner.input_size,
                         inner.descriptor_dim, inner.pca_id)
        self.inner = inner
        self.gate = threading.Event()
        self.entered = threading.Event()

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        self.entered.set()
        assert self.gate.wait(60), "the test never opened the gate"
        return self.inner.infer(batch)

    def probe(self) -> np.ndarray:  # the map check's fingerprint pass is not a frame: never gated
        return self.inner.probe()


def test_overload_keeps_only_the_newest_frame_and_counts_the_rest(rclpy_context, built_map, tiny_backend, traversals):
    from vpr_ros.ros.localizer_node import LocalizerNode

    backend = GatedBackend(tiny_backend)
    node = LocalizerNode(backend=backend, parameter_overrides=overrides(
        map_dir=str(built_map), qos="reliable", score_threshold=0.0, diagnostics_period=0.2))
    s = Spinning(node)
    try:
        p = QueryPlayer("image")
        assert p.wait_for_localizer(HANG_GUARD_S)
        img = traversals[0].images
        p.send(img[0], 100.0)
        assert backend.entered.wait(20)  # the worker is busy with frame 0
        n = 9  # within the reliable subscription's DDS history (depth 10): none is lost before the node
        for k in range(1, n + 1):
            p.send(img[k % len(img)], 100.0 + k)
        assert until(lambda: node.slots.received == n + 1, spin=p)
        assert node.slots.pending() == 1 and node.slots.dropped == n - 1  # only the newest waits
        backend.gate.set()
        assert p.spin_until(lambda: len(p.log.tables) == 2, HANG_GUARD_S)
        assert sorted(p.log.tables) == [100.0, 100.0 + n]  # the first and the newest were answered
        # the worker counts a frame after publishing its table: wait for the count, do not race it
        assert until(lambda: node.counters.processed == 2, spin=p)
        st, vals = last_diag(p)
        assert int(vals["frames_dropped"]) == n - 1 and int(vals["frames_received"]) == n + 1
        p.destroy_node()
    finally:
        backend.gate.set()
        s.stop()


def _write_params(path, **values):
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": values}}))
    return path


def _builder_feeder(name: str):
    """A node publishing images and odometry to a map builder process, collecting its diagnostics;
    returns (node, image publisher, odometry publisher, diagnostics statuses)."""
    from diagnostic_msgs.msg import DiagnosticArray
    from nav_msgs.msg import Odometry
    from sensor_msgs.msg import Image

    client = rclpy.create_node(name)
    pub_img = client.create_publisher(Image, "image", 50)
    pub_odom = client.create_publisher(Odometry, "odom", 50)
    diags: list = []
    client.create_subscription(DiagnosticArray, "/diagnostics",
                               lambda m: diags.extend(st for st in m.status if st.name.endswith("map_builder")), 20)
    return client, pub_img, pub_odom, diags


SIGNAL_CASES = {  # what is sent, to whom: the node alone, or its whole process group (systemctl stop)
    "SIGINT": ([signal.SIGINT], False),
    # ros2 launch's escalation; the SIGTERM as a burst of 200 while the drain waits (a deadlock once in 10)
    "SIGINT-then-SIGTERM": ([signal.SIGINT, signal.SIGTERM], False),
    "SIGTERM-to-the-group": ([signal.SIGTERM], True), "SIGKILL-to-the-group": ([signal.SIGKILL], True),
}


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.parametrize("case", list(SIGNAL_CASES))
def test_no_accepted_keyframe_is_lost_on_signals(rclpy_context, tmp_path, traversals, case):
    """A map builder process whose encoder is far behind (the real ViT-S/14 on one CPU thread, 24
    images sent at once) gets real signals while keyframes are still being accepted: every
    keyframe it reported as accepted is in the map, encoded at once (SIGINT, SIGTERM: it drains
    without a time limit) or after the next start (a second signal, SIGKILL: they waited on disk;
    `vpr_ros_build_map --finish` encodes them here, as the node's next start would)."""
    from vpr_ros.cli.build_map import main as build_map

    signals, to_group = SIGNAL_CASES[case]
    map_dir = tmp_path / "signal_map"
    settings = dict(map_dir=str(map_dir), backend="torch", qos="reliable", pose_qos="reliable", autosave_period=0.0,
                    max_pose_wait=30.0, **{"keyframes.min_distance": 0.0, "keyframes.min_rotation_deg": 0.0,
                                           "keyframes.max_interval": 0.01, "model.backbone": "vits14",
                                           "model.random_weights": True})
    params = _write_params(tmp_path / "p.yaml", **settings)
    proc = subprocess.Popen([sys.executable, "-c", "from vpr_ros.ros.map_builder_node import main; "
                             "raise SystemExit(main())", "--ros-args", "--params-file", str(params)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"})
    lines: list[str] = []
    finishing = threading.Event()

    def read() -> None:
        for raw in proc.stdout:
            lines.append(raw.decode(errors="replace"))
            if "finishing:" in lines[-1]:
                finishing.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    client, pub_img, pub_odom, diags = _builder_feeder("signal_feeder")
    n, stamps = 24, [200.0 + 0.1 * k for k in range(24)]
    try:
        assert until(lambda: pub_img.get_subscription_count() and pub_odom.get_subscription_count()
                     and diags, timeout=120, spin=client), "".join(lines)[-3000:]
        first = traversals[0]
        for j in range(n // 10 + 1):  # odometry at 1 Hz, images at 10 Hz
            pub_odom.publish(odometry(200.0 + j, first.poses[j]))
        for k in range(n):
            pub_img.publish(rgb_to_image(first.images[k % len(first.images)], stamps[k]))

        def value(key):
            return int({kv.key: kv.value for kv in diags[-1].values}[key]) if diags else -1

        # the signal comes while the encoder is behind, at a moment of the stream drawn per case
        moment = random.Random(case).randint(4, n - 4)
        assert until(lambda: value("keyframes_accepted") >= moment, timeout=HANG_GUARD_S, spin=client), "".join(lines)[-3000:]
        reported, encoded = value("keyframes_accepted"), value("keyframes")
        assert encoded < reported, (encoded, reported)  # there really is a backlog
        for i, sig in enumerate(signals):
            if i:  # the second signal once the node is finishing (a hang guard only: no budget on the work)
                assert finishing.wait(240), "".join(lines)[-3000:]
            for _ in range(200 if i else 1):
                if proc.poll() is not None:
                    break
                if to_group:
                    os.killpg(proc.pid, sig)
                else:
                    proc.send_signal(sig)
        proc.wait(timeout=240)
        reader.join(timeout=30)
    finally:
        client.destroy_node()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = "".join(lines)
    if signals != [signal.SIGKILL]:
        assert proc.returncode == 0, text[-12000:]  # the whole faulthandler dump if the process crashed
        after = text[text.find("finishing:"):] if "finishing:" in text else text
        assert "[ERROR]" not in after and "Traceback" not in text and "never retrieved" not in text, text[-8000:]
    stopped = VprMap.load(map_dir)
    if len(signals) == 1 and signals[0] != signal.SIGKILL:
        assert stopped.pending == 0 and len(stopped) >= reported, text[-3000:]  # drained before exit
    if signals == [signal.SIGKILL]:  # killed with a backlog: it waited on disk, none of it lost
        assert stopped.pending > 0 and len(stopped) + stopped.pending >= reported
    if stopped.pending:  # what waited on disk is encoded by the next start
        assert build_map(["--finish", "--map-dir", str(map_dir), "--params-file", str(params)]) == 0
    vmap = VprMap.load(map_dir)
    assert vmap.pending == 0 and len(vmap) >= reported
    assert [k.stamp for k in vmap.keyframes] == pytest.approx(stamps[:len(vmap)])  # in order, none missing


def test_signal_handlers_take_no_lock_so_a_storm_of_signals_never_deadlocks():
    """The handlers of run_node and of the map builder's drain are a SignalLatch (a C builtin as
    handler, CPython's wakeup fd into a pipe). A real process waits on one while it is sent SIGTERM as fast as this process
    can: it must count 100 of them and exit. (The same loop around a threading.Event, as the drain
    had it, hangs within the first few hundred signals: Event.set in the handler waits for the
    lock the interrupted Event.wait holds; seen as a 1-in-10 deadlock of double SIGTERM.)"""
    code = ("import signal, sys\n"
            "from vpr_ros.ros.node_main import SignalLatch\n"
            "latch = SignalLatch().install(signal.SIGTERM)\n"
            "print('ready', flush=True)\n"
            "while latch.count < 100:\n"
            "    latch.wait(0.05)\n"
            "print('counted', latch.count, flush=True)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        sent = 0
        while proc.poll() is None and sent < 5_000_000:  # signals coalesce: far more sent than counted
            os.kill(proc.pid, signal.SIGTERM)
            sent += 1
        assert proc.poll() is not None, f"hung after {sent} SIGTERMs"
        # it counted them all; a signal sent after that may meet the default handler that Python's
        # finalisation restores, so -SIGTERM is a valid exit status here
        assert proc.stdout.read().startswith("counted") and proc.returncode in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_three_hundred_concurrent_service_calls_are_all_answered(rclpy_context, built_map):
    """Three clients send 100 vpr/relocalize calls each at once (rclpy's default service queue of 10
    answered 13 of 300); the clients keep their own answers with a deep queue, as a caller must."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from std_srvs.srv import Trigger

    from vpr_ros.ros.localizer_node import LocalizerNode

    loc = LocalizerNode(parameter_overrides=overrides(map_dir=str(built_map), **{"initial_pose.enabled": True}))
    s = Spinning(loc)
    caller = rclpy.create_node("many_callers")
    try:
        deep = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
        clients = [caller.create_client(Trigger, "vpr/relocalize", qos_profile=deep) for _ in range(3)]
        assert all(c.wait_for_service(timeout_sec=HANG_GUARD_S) for c in clients)
        futures = [c.call_async(Trigger.Request()) for c in clients for _ in range(100)]
        assert until(lambda: all(f.done() for f in futures), spin=caller), sum(f.done() for f in futures)
        assert all(f.result().success and f.result().message.startswith("armed") for f in futures)
    finally:
        caller.destroy_node()
        s.stop()


def test_localizer_process_shuts_down_quietly(rclpy_context, tmp_path, built_map):
    """SIGINT while frames are being answered: exit 0, nothing above INFO after the signal."""
    params = _write_params(tmp_path / "p.yaml", map_dir=str(built_map), qos="reliable", score_threshold=0.0,
                           **{f"model.{k}": v for k, v in TINY_MODEL.items()})
    proc = subprocess.Popen([sys.executable, "-c", "from vpr_ros.ros.localizer_node import main; "
                             "raise SystemExit(main())", "--ros-args", "--params-file", str(params)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        p = QueryPlayer("image")
        assert p.wait_for_localizer(120)
        img = np.zeros((56, 56, 3), np.uint8)
        assert p.play([img], [1.0], timeout=HANG_GUARD_S) == 1
        for k in range(20):  # keep the worker busy while the signal arrives
            p.send(img, 2.0 + k)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        p.destroy_node()
    finally:
        if proc.poll() is None:
            proc.kill()
    text = out.decode()
    assert proc.returncode == 0, text[-2000:]
    tail = text[text.find("listening on"):]
    assert "[ERROR]" not in tail and "[WARN]" not in tail and "Traceback" not in tail and "Failed to publish" not in tail \
        and "never retrieved" not in text, tail


def _start(module: str, params, **popen) -> tuple[subprocess.Popen, list[str]]:
    """A node process (``module``'s main) and the lines it prints, collected on a thread."""
    proc = subprocess.Popen([sys.executable, "-c", f"from {module} import main; raise SystemExit(main())",
                             "--ros-args", "--params-file", str(params)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"}, **popen)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(r.decode(errors="replace") for r in proc.stdout), daemon=True).start()
    return proc, lines


@pytest.mark.torch
def test_map_builder_refuses_maps_it_cannot_read_or_may_not_write(tmp_path, built_map):
    """Started on a map of a future format, or on a map another process is writing, the map
    builder exits with the reason (code 2) and every file stays as it was."""
    import shutil

    from test_map_durability import future_format_copy

    future = future_format_copy(built_map, tmp_path / "future")
    busy = tmp_path / "busy"
    shutil.copytree(built_map, busy)
    holder = VprMap.open_writer(busy)
    try:
        for d, why in ((future, "map format version 4 is not supported"), (busy, f"being written by pid {os.getpid()}")):
            before = {f.name: f.read_bytes() for f in d.iterdir()}
            params = _write_params(tmp_path / f"{d.name}.yaml", map_dir=str(d), backend="torch",
                                   **{f"model.{k}": v for k, v in TINY_MODEL.items()})
            proc, lines = _start("vpr_ros.ros.map_builder_node", params)
            assert proc.wait(timeout=120) == 2
            text = "".join(lines)
            assert why in text and "Traceback" not in text, text[-2000:]
            assert {f.name: f.read_bytes() for f in d.iterdir()} == before
    finally:
        holder.close()


@pytest.mark.torch
@pytest.mark.slow
def test_map_builder_keeps_running_and_every_keyframe_when_writes_fail(rclpy_context, tmp_path, traversals):
    """Real write failures in a running map builder process: its file-size limit is lowered from
    outside (prlimit), so every write past 4 KiB fails with EFBIG as on a full disk. Keyframes that
    cannot be stored are refused and counted, the save service answers success false with the
    reason, /diagnostics says ERROR, the node keeps running; with the limit lifted it stores again,
    and the map holds exactly the keyframes it reported as accepted, with no stray file."""
    import resource

    from diagnostic_msgs.msg import DiagnosticStatus
    from std_srvs.srv import Trigger

    map_dir = tmp_path / "map"
    params = _write_params(tmp_path / "p.yaml", map_dir=str(map_dir), backend="torch", qos="reliable",
                           pose_qos="reliable", autosave_period=0.0, max_pose_wait=30.0,
                           **{"keyframes.min_distance": 0.0, "keyframes.min_rotation_deg": 0.0,
                              "keyframes.max_interval": 0.01, "index.index_type": "hnsw",
                              **{f"model.{k}": v for k, v in TINY_MODEL.items()}})
    proc, lines = _start("vpr_ros.ros.map_builder_node", params)
    client, pub_img, pub_odom, diags = _builder_feeder("full_disk_feeder")
    first = traversals[0]
    try:
        assert until(lambda: pub_img.get_subscription_count() and pub_odom.get_subscription_count() and diags,
                     timeout=120, spin=client), "".join(lines)[-3000:]

        def value(key):
            return int({kv.key: kv.value for kv in diags[-1].values}[key])

        def send(ks):
            for k in ks:
                pub_odom.publish(odometry(300.0 + k, first.poses[k]))
                pub_img.publish(rgb_to_image(first.images[k], 300.0 + k))
            pub_odom.publish(odometry(300.0 + ks[-1] + 0.5, first.poses[ks[-1]]))  # a pose after the last image

        def save():
            cli = client.create_client(Trigger, "vpr/save_map")
            assert cli.wait_for_service(timeout_sec=30)
            fut = cli.call_async(Trigger.Request())
            rclpy.spin_until_future_complete(client, fut, timeout_sec=60)
            return fut.result()

        send(range(0, 4))
        assert until(lambda: value("keyframes") == 4, timeout=60, spin=client), "".join(lines)[-3000:]
        soft, hard = resource.prlimit(proc.pid, resource.RLIMIT_FSIZE)
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (4096, hard))
        try:
            res = save()  # the HNSW snapshot of the 4 keyframes cannot be written
            assert not res.success and "save failed" in res.message and "stays on disk" in res.message, res.message
            send(range(4, 8))
            assert until(lambda: value("keyframes_dropped") >= 1 and diags[-1].level == DiagnosticStatus.ERROR,
                         timeout=60, spin=client), "".join(lines)[-3000:]
            assert proc.poll() is None
        finally:
            resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (soft, hard))
        send(range(8, 12))
        assert until(lambda: value("keyframes") == value("keyframes_accepted") and value("keyframes_accepted") >= 8,
                     timeout=60, spin=client), "".join(lines)[-3000:]
        accepted = value("keyframes_accepted")
        assert save().success and diags[-1].level != DiagnosticStatus.ERROR or until(
            lambda: diags[-1].level != DiagnosticStatus.ERROR, timeout=10, spin=client)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0, "".join(lines)[-3000:]
    finally:
        client.destroy_node()
        if proc.poll() is None:
            proc.kill()
    vmap = VprMap.load(map_dir)
    assert len(vmap) == accepted and vmap.pending == 0
    assert set(k.stamp for k in vmap.keyframes) <= {300.0 + k for k in range(12)}
    assert {300.0 + k for k in range(4)} | {300.0 + k for k in range(8, 12)} <= {k.stamp for k in vmap.keyframes}
    assert not [f for f in map_dir.iterdir() if f.name.startswith(".")]
    assert "Traceback" not in "".join(lines)
