"""Start-up and diagnostics of the nodes (hard to break, round 2): services answer while the model
is being exported, SIGINT stops a node at any point of start-up, diagnostics carry the node's
full name and lifecycle state, warn about a missing /clock, and clear a WARN once its cause is gone.

The export is held by the test (it holds the cache's export lock, as a second node exporting the
same model would), so "while the model is loading" is a state, not a race against a timer."""
from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys

import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rcl_interfaces.srv import GetParameters

from conftest import HANG_GUARD_S, TINY_MODEL
from test_nodes import Spinning, overrides, until
from test_ros_behaviour import _write_params



def _held_export_lock(cache):
    """Hold the lock vpr_ros takes around exporting the tiny model into ``cache``; returns
    (file object holding the lock, the ONNX path the node will look for)."""
    from vpr_ros.config import ModelConfig
    from vpr_ros.runtime.factory import cached_onnx_path

    onnx = cached_onnx_path(ModelConfig(**TINY_MODEL), cache)
    onnx.parent.mkdir(parents=True)
    fh = open(onnx.with_name(onnx.name + ".lock"), "a+b")
    fcntl.flock(fh, fcntl.LOCK_EX)
    return fh, onnx


def _start_configure(client, fqn: str) -> list:
    """Request 'configure' and wait until the node reports 'configuring'; a request sent before DDS
    matched the server is lost, so it is sent again while the node is still unconfigured. Returns
    the futures of the requests (the last one is the one answered)."""
    from lifecycle_msgs.srv import ChangeState

    from vpr_ros.ros.lifecycle_client import TRANSITIONS, state_of

    change = client.create_client(ChangeState, f"{fqn}/change_state")
    assert change.wait_for_service(timeout_sec=60)
    req = ChangeState.Request()
    req.transition.id = TRANSITIONS["configure"]
    futures, seen = [change.call_async(req)], []

    def configuring() -> bool:
        seen.append(state_of(client, fqn, 5))
        if seen[-1] == "unconfigured":
            futures.append(change.call_async(req))
        return seen[-1] == "configuring"
    assert until(configuring, spin=client, timeout=60), seen[-5:]
    return futures


def _get_parameter(client, fqn: str, name: str):
    cli = client.create_client(GetParameters, f"{fqn}/get_parameters")
    try:
        assert cli.wait_for_service(timeout_sec=HANG_GUARD_S)
        fut = cli.call_async(GetParameters.Request(names=[name]))
        rclpy.spin_until_future_complete(client, fut, timeout_sec=HANG_GUARD_S)
        assert fut.done(), f"{fqn}/get_parameters did not answer"
        return fut.result().values[0]
    finally:
        client.destroy_client(cli)


@pytest.mark.torch
@pytest.mark.slow
def test_a_node_exporting_its_model_answers_services_reports_it_and_stops_on_sigint(rclpy_context, tmp_path, built_map):
    cache = tmp_path / "cache"
    lock, _ = _held_export_lock(cache)
    params = _write_params(tmp_path / "p.yaml", map_dir=str(built_map), backend="onnxruntime",
                           engine_cache_dir=str(cache), diagnostics_period=0.2,
                           **{f"model.{k}": v for k, v in TINY_MODEL.items()})
    out = tmp_path / "log.txt"
    with open(out, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", "from vpr_ros.ros.localizer_node import main; "
                                 "raise SystemExit(main())", "--ros-args", "--params-file", str(params)],
                                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    client = rclpy.create_node("startup_probe")
    try:
        got: list = []
        client.create_subscription(DiagnosticArray, "/diagnostics", got.append, 10)
        value = _get_parameter(client, "/localizer", "map_dir")  # answered while the export waits
        assert value.string_value == str(built_map)
        assert until(lambda: any("starting: opening the model" in st.message for m in got for st in m.status),
                     spin=client, timeout=60)
        st = next(st for m in got for st in m.status if "starting" in st.message)
        assert st.level == DiagnosticStatus.WARN and st.name == "/localizer: localizer"
        assert until(lambda: "another process is exporting" in out.read_text(), timeout=60)  # waits for our lock
        assert _get_parameter(client, "/localizer", "backend").string_value == "onnxruntime"  # still answering
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0  # stopped without waiting for the export
    finally:
        client.destroy_node()
        if proc.poll() is None:
            proc.kill()
        lock.close()
    text = out.read_text()
    assert "Traceback" not in text and "started" not in text.split("starting:")[-1], text[-3000:]


@pytest.mark.torch
@pytest.mark.slow
def test_lifecycle_configure_while_exporting_leaves_get_state_and_parameters_answering(rclpy_context, tmp_path,
                                                                                        built_map):
    from vpr_ros.config import ModelConfig
    from vpr_ros.ros.lifecycle_client import state_of
    from vpr_ros.ros.localizer_node import LocalizerLifecycleNode
    from vpr_ros.runtime.factory import onnx_for

    cache = tmp_path / "cache"
    lock, onnx = _held_export_lock(cache)
    node = LocalizerLifecycleNode(parameter_overrides=overrides(map_dir=str(built_map), backend="onnxruntime",
                                                               engine_cache_dir=str(cache), diagnostics_period=0.2))
    s = Spinning(node)
    client = rclpy.create_node("lifecycle_probe")
    try:
        futures = _start_configure(client, "/localizer")
        assert _get_parameter(client, "/localizer", "backend").string_value == "onnxruntime"
        assert state_of(client, "/localizer", 5) == "configuring"  # get_state answers during the transition
        shutil.copyfile(onnx_for(ModelConfig(**TINY_MODEL)), onnx)  # the "other process" finishes its export
        lock.close()
        assert until(lambda: any(f.done() and f.result().success for f in futures), spin=client, timeout=120)
        assert state_of(client, "/localizer", 5) == "inactive"
        got: list = []
        client.create_subscription(DiagnosticArray, "/diagnostics", got.append, 10)
        assert until(lambda: any(st.name == "/localizer: localizer" for m in got for st in m.status), spin=client)
        st = [st for m in got for st in m.status if st.name == "/localizer: localizer"][-1]
        assert {kv.key: kv.value for kv in st.values}["lifecycle_state"] == "inactive"
    finally:
        lock.close()
        client.destroy_node()
        s.stop()


def test_use_sim_time_without_clock_is_reported_and_can_be_set_live(rclpy_context, built_map):
    from rclpy.parameter import Parameter

    from vpr_ros.ros.localizer_node import LocalizerNode

    node = LocalizerNode(parameter_overrides=[*overrides(map_dir=str(built_map), diagnostics_period=0.2),
                                              Parameter("use_sim_time", value=True)])
    s = Spinning(node)
    client = rclpy.create_node("clock_probe")
    try:
        got: list = []
        client.create_subscription(DiagnosticArray, "/diagnostics", got.append, 10)
        assert until(lambda: any("no /clock has arrived" in st.message for m in got for st in m.status), spin=client)
        assert next(st for m in got for st in m.status if "/clock" in st.message).level == DiagnosticStatus.WARN
        result = node.set_parameters([Parameter("use_sim_time", value=False)])  # what `ros2 param set` does
        assert result[0].successful, result[0].reason
        got.clear()
        assert until(lambda: any(st.level == DiagnosticStatus.OK for m in got for st in m.status), spin=client)
    finally:
        client.destroy_node()
        s.stop()


def test_a_warning_for_failed_frames_clears_once_they_stop(monkeypatch):
    """problem_age: the WARN lasts PROBLEM_WINDOW s after the last growth of a failure counter
    (the clock is the test's, not the machine's)."""
    from vpr_ros.ros import node_base
    from vpr_ros.ros.node_base import PROBLEM_WINDOW, VprNodeMixin

    now = [1000.0]
    monkeypatch.setattr(node_base.time, "monotonic", lambda: now[0])
    m = VprNodeMixin()
    assert m.problem_age((0,)) is None  # never failed
    assert m.problem_age((1,)) == 0.0  # one failure now
    now[0] += PROBLEM_WINDOW / 2
    assert m.problem_age((1,)) == PROBLEM_WINDOW / 2  # still recent: WARN
    now[0] += PROBLEM_WINDOW
    assert m.problem_age((1,)) > PROBLEM_WINDOW  # cause gone: OK again
    assert m.problem_age((2,)) == 0.0  # a new failure: WARN again


def test_a_frame_stamped_far_ahead_of_the_clock_is_counted_and_changes_nothing(rclpy_context, built_map, traversals):
    """Trial case: one frame stamped 2e9 s switched loop closures off for good. Now it is refused
    where it enters (counted on /diagnostics) and the next frames are answered as before."""
    from vpr_ros.ros.localizer_node import LocalizerNode
    from vpr_ros.ros.player import QueryPlayer

    node = LocalizerNode(parameter_overrides=overrides(map_dir=str(built_map), qos="reliable", score_threshold=0.0))
    s = Spinning(node)
    try:
        p = QueryPlayer("image")
        assert p.wait_for_localizer(HANG_GUARD_S)
        img = traversals[0].images
        future = 2e9  # the trial's stamp: years ahead of any clock this test runs under
        p.send(img[1], future)
        assert until(lambda: node.counters.stamps_ahead == 1, spin=p)
        assert "ahead of the node's clock" in node.counters.last_error
        assert p.play([img[2], img[3]], [100.0, 101.0], timeout=HANG_GUARD_S) == 2
        assert p.log.tables[101.0][0]["db_id"] == 3 and future not in p.log.tables
        p.destroy_node()
    finally:
        s.stop()


@pytest.mark.torch
@pytest.mark.slow
def test_sigint_during_a_lifecycle_configure_that_exports_stops_the_process(rclpy_context, tmp_path, built_map):
    cache = tmp_path / "cache"
    lock, _ = _held_export_lock(cache)
    params = _write_params(tmp_path / "p.yaml", map_dir=str(built_map), backend="onnxruntime",
                           engine_cache_dir=str(cache), **{f"model.{k}": v for k, v in TINY_MODEL.items()})
    proc = subprocess.Popen([sys.executable, "-c", "from vpr_ros.ros.localizer_node import main_lifecycle; "
                             "raise SystemExit(main_lifecycle())", "--ros-args", "--params-file", str(params)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    client = rclpy.create_node("lifecycle_sigint_probe")
    try:
        _start_configure(client, "/localizer")
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)  # the held export never finishes: it must not be waited for
    finally:
        client.destroy_node()
        if proc.poll() is None:
            proc.kill()
        lock.close()
    text = out.decode()
    assert proc.returncode == 0 and "stopped during 'configure'" in text and "Traceback" not in text, text[-3000:]


def test_help_describes_every_parameter_without_starting_the_node():
    from vpr_ros.config import LOCALIZER_SECTIONS

    r = subprocess.run([sys.executable, "-c", "from vpr_ros.ros.localizer_node import main; raise SystemExit(main())",
                        "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "usage: ros2 run vpr_ros localizer" in r.stdout and "starting" not in r.stdout + r.stderr
    for prefix, cls in LOCALIZER_SECTIONS.items():
        for name in cls.__dataclass_fields__:
            assert f"  {prefix + '.' if prefix else ''}{name} = " in r.stdout
