"""Launch files and the launch-free entry point that runs the same node graph.

``launch``/``launch_ros`` cannot be installed in CI, so the launch files are checked
statically here (their arguments and the graph they start); the graph itself is run for
real through ``vpr_ros_launch``. If launch_ros is importable, the description is built too.
"""
from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys

import pytest
import yaml

from vpr_ros.launch_graph import GRAPHS, build_map_graph, localize_graph

from conftest import HANG_GUARD_S, REPO, TINY_MODEL

COMMON = {"map_dir", "params_file", "backend", "camera_topic", "namespace", "use_sim_time", "log_level",
          "lifecycle", "autostart", "transport", "weights", "rviz"}
EXPECTED_ARGS = {
    "localize.launch.py": ("localize_graph", COMMON),
    "build_map.launch.py": ("build_map_graph", COMMON | {"odom_topic", "loop_closure", "optimized_path_topic",
                                                        "fleet", "robot_id"}),
}


def launch_arguments(path):
    tree = ast.parse(path.read_text())
    funcs = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    imported = {a.name for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
    args = next(ast.literal_eval(n.value) for n in tree.body
                if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "ARGUMENTS")
    return funcs, imported, args


@pytest.mark.parametrize("fname", sorted(EXPECTED_ARGS))
def test_launch_files_declare_described_arguments(fname):
    graph_fn, names = EXPECTED_ARGS[fname]
    funcs, imported, args = launch_arguments(REPO / "launch" / fname)
    assert "generate_launch_description" in funcs
    assert graph_fn in imported and "generate" in imported
    assert {a[0] for a in args} == names
    assert all(len(a[2]) > 15 for a in args), "every argument needs a description"
    import inspect

    params = set(inspect.signature(GRAPHS[graph_fn.replace("_graph", "")]).parameters)
    assert {a[0] for a in args} == params, "launch arguments must match the graph function"


def test_graph_specs_become_ros_command_lines():
    [spec] = localize_graph(map_dir="/maps/lab", params_file="/p.yaml", backend="torch",
                            camera_topic="/front/image_raw", namespace="robot1")
    cmd = spec.command()
    assert cmd[:2] == [sys.executable, "-c"] and "from vpr_ros.ros.localizer_node import main;" in cmd[2]
    joined = " ".join(cmd)
    for part in ("-r __node:=localizer", "-r __ns:=/robot1", "--params-file /p.yaml", "-p map_dir:=/maps/lab",
                 "-p backend:=torch", "-r image:=/front/image_raw",
                 "-r image/compressed:=/front/image_raw/compressed"):
        assert part in joined
    [plain] = localize_graph()
    assert plain.overrides == {} and plain.remappings == ()  # empty args keep the params file values
    [mb] = build_map_graph(odom_topic="/wheel/odom")
    assert ("odom", "/wheel/odom") in mb.remappings and mb.executable == "map_builder"
    assert mb.shutdown_timeouts[0] >= 25  # ros2 launch waits for the final save before SIGTERM
    assert plain.shutdown_timeouts[0] >= 15  # the localizer once took over launch's default 5 s under load
    [lc] = localize_graph(use_sim_time="true", log_level="debug", lifecycle="true", namespace="robot1")
    assert lc.program == "localizer_lifecycle" and lc.autostart and lc.fqn == "/robot1/localizer"
    assert "main_lifecycle" in lc.command()[2] and lc.overrides == {"use_sim_time": True}
    assert " ".join(lc.command()).endswith("--log-level debug")
    with pytest.raises(ValueError, match="log_level"):
        localize_graph(log_level="loud")
    mb, fl = build_map_graph(map_dir="/maps/a", namespace="robot_a", fleet="true", robot_id="3")
    assert fl.executable == "fleet" and fl.fqn == "/robot_a/fleet" and fl.overrides == {"map_dir": "/maps/a",
                                                                                         "robot_id": 3}
    assert "from vpr_ros.ros.fleet_node import main;" in fl.command()[2]
    with pytest.raises(ValueError, match="robot_id"):
        build_map_graph(fleet="true", robot_id="seven")


def test_launch_description_builds_when_launch_ros_is_available():
    pytest.importorskip("launch_ros", reason="launch_ros is not pip-installable here (see README)")
    import importlib.util

    for fname in EXPECTED_ARGS:
        spec = importlib.util.spec_from_file_location("lf", REPO / "launch" / fname)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        ld = mod.generate_launch_description()
        assert {a.name for a in ld.get_launch_arguments()} == EXPECTED_ARGS[fname][1]


@pytest.mark.ros
def test_launch_free_entry_point_runs_the_graph(tmp_path, built_map, traversals, rclpy_context):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"/**": {"ros__parameters": {
        "qos": "reliable", **{f"model.{k}": v for k, v in TINY_MODEL.items()}}}}))
    proc = subprocess.Popen([sys.executable, "-m", "vpr_ros.cli.launch", "localize", "--map-dir", str(built_map),
                             "--params-file", str(params), "--camera-topic", "cam1/image", "--namespace", "robot1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        from vpr_ros.ros.player import QueryPlayer

        p = QueryPlayer("robot1/cam1/image", vpr_ns="robot1/vpr")
        assert p.wait_for_localizer(180), "localizer did not come up under /robot1"
        assert p.play(traversals[0].images[:3], [900.0, 901.0, 902.0], timeout=HANG_GUARD_S) == 3
        assert [p.log.tables[t][0]["db_id"] for t in (900.0, 901.0, 902.0)] == [0, 1, 2]
        assert p.log.poses[900.0].header.frame_id == "map"
        p.destroy_node()
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out.decode()[-2000:]
    assert b"starting localizer" in out


@pytest.mark.ros
def test_launch_free_entry_point_runs_the_lifecycle_graph(tmp_path, built_map, traversals, rclpy_context):
    """--lifecycle starts the managed localizer and drives configure + activate over its services."""
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"/**": {"ros__parameters": {
        "qos": "reliable", **{f"model.{k}": v for k, v in TINY_MODEL.items()}}}}))
    proc = subprocess.Popen([sys.executable, "-m", "vpr_ros.cli.launch", "localize", "--map-dir", str(built_map),
                             "--params-file", str(params), "--lifecycle"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        from vpr_ros.ros.player import QueryPlayer

        p = QueryPlayer("image")
        assert p.wait_for_localizer(180), "managed localizer did not become active"
        assert p.play(traversals[0].images[4:5], [950.0], timeout=HANG_GUARD_S) == 1
        assert p.log.tables[950.0][0]["db_id"] == 4
        p.destroy_node()
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out.decode()[-2000:]
    assert b"/localizer: active" in out and b"localizer_lifecycle" not in out.split(b"starting")[0]


def test_rviz_config_shows_the_vpr_topics_and_rviz_true_starts_it(monkeypatch):
    from vpr_ros import launch_graph
    from vpr_ros.launch_graph import default_rviz_config

    monkeypatch.setattr(launch_graph, "rviz2_installed", lambda: True)  # no rviz2 in this workplace

    cfg = yaml.safe_load(open(default_rviz_config()))
    displays = {d["Name"]: d for d in cfg["Visualization Manager"]["Displays"]}
    topics = {d["Topic"]["Value"] for d in displays.values() if "Topic" in d}
    assert {"/vpr/map_keyframes", "/vpr/markers", "/vpr/pose", "/vpr/debug_image"} <= topics
    assert cfg["Visualization Manager"]["Global Options"]["Fixed Frame"] == "map"
    assert displays["Map keyframes"]["Topic"]["Durability Policy"] == "Transient Local"  # the node latches it
    for graph in ("localize", "build_map"):
        assert [s.package for s in GRAPHS[graph]()] == ["vpr_ros"]
        specs = GRAPHS[graph](rviz="true")
        assert specs[-1].command()[:3] == ["rviz2", "-d", default_rviz_config()]


def test_rviz_true_without_rviz2_fails_before_any_node_starts(monkeypatch, tmp_path):
    """ros2 launch evaluates the graph (an OpaqueFunction) before it starts anything: a missing
    rviz2 is reported there, not after the localizer is already running (it was left orphaned)."""
    from vpr_ros import launch_graph

    monkeypatch.setattr(launch_graph, "rviz2_installed", lambda: False)
    for graph in ("localize", "build_map"):
        with pytest.raises(ValueError, match="rviz2 is not installed.*no node was started"):
            GRAPHS[graph](rviz="true")
        assert [s.package for s in GRAPHS[graph](rviz="false")] == ["vpr_ros"]
    monkeypatch.undo()
    monkeypatch.setenv("PATH", str(tmp_path))  # no rviz2 anywhere, and an ament index without it
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(tmp_path))
    assert not launch_graph.rviz2_installed()
    (tmp_path / "rviz2").write_text("#!/bin/sh\n")
    (tmp_path / "rviz2").chmod(0o755)
    assert launch_graph.rviz2_installed()
