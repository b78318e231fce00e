"""``vpr_ros_launch``: run the node graph of a launch file without ``ros2 launch``.

Example: ``vpr_ros_launch localize --map-dir ~/maps/lab --camera-topic /camera/image_raw``.
"""
from __future__ import annotations

import argparse
import signal
import time

from vpr_ros.cli import EXPECTED_ERRORS, HelpWithDefaults, report_error
from vpr_ros.config import read_yaml
from vpr_ros.launch_graph import (GRAPHS, LOG_LEVELS, default_params_file, default_rviz_config, rviz2_installed,
                                  start_graph, stop_graph)

DEFAULT_PARAMS = {"localize": "localizer.yaml", "build_map": "map_builder.yaml"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(formatter_class=HelpWithDefaults, prog="vpr_ros_launch", description=__doc__.splitlines()[0])
    ap.add_argument("graph", choices=sorted(GRAPHS), help="which launch file's graph to run")
    ap.add_argument("--map-dir", default="", help="map directory (overrides the params file)")
    ap.add_argument("--params-file", default="", help="ROS parameters YAML (default: config/ of the package)")
    ap.add_argument("--backend", default="", help="inference backend (overrides the params file)")
    ap.add_argument("--camera-topic", default="image", help="camera image topic to remap 'image' to")
    ap.add_argument("--transport", default=None, choices=("raw", "compressed"),
                    help="image transport: raw (sensor_msgs/Image) or compressed (<camera-topic>/compressed); "
                         "default: the params file's")
    ap.add_argument("--weights", default="", help="model weights file (overrides the params file's model.weights)")
    ap.add_argument("--rviz", action="store_true", help="also start rviz2 with the package's rviz/vpr_ros.rviz")
    ap.add_argument("--odom-topic", default="odom", help="odometry topic (build_map only)")
    ap.add_argument("--loop-closure", action="store_true",
                    help="build_map: close loops while mapping (vpr/loop_closures for a SLAM back end)")
    ap.add_argument("--optimized-path-topic", default="",
                    help="build_map: nav_msgs/Path of the SLAM back end's optimised keyframes; poses follow it")
    ap.add_argument("--fleet", action="store_true", help="build_map: also start the fleet node (docs/fleet.md)")
    ap.add_argument("--robot-id", type=int, default=0, help="build_map --fleet: this robot's id in the fleet")
    ap.add_argument("--namespace", default="", help="namespace of the nodes")
    ap.add_argument("--use-sim-time", action="store_true", help="use /clock as the nodes' time")
    ap.add_argument("--log-level", default="info", choices=LOG_LEVELS, help="log level of the nodes")
    ap.add_argument("--lifecycle", action="store_true", help="start the managed (lifecycle) variants")
    ap.add_argument("--no-autostart", action="store_true",
                    help="with --lifecycle: leave the nodes unconfigured (for your lifecycle manager)")
    a = ap.parse_args(argv)
    if not 0 <= a.robot_id <= 65535:
        ap.error(f"--robot-id must be 0..65535, got {a.robot_id}")
    kwargs = dict(map_dir=a.map_dir, params_file=a.params_file or default_params_file(DEFAULT_PARAMS[a.graph]),
                  backend=a.backend, camera_topic=a.camera_topic, namespace=a.namespace,
                  transport=a.transport or "", weights=a.weights, rviz=str(a.rviz and rviz2_installed()),
                  use_sim_time=str(a.use_sim_time), log_level=a.log_level, lifecycle=str(a.lifecycle),
                  autostart=str(not a.no_autostart))
    if a.graph == "build_map":
        kwargs.update(odom_topic=a.odom_topic, loop_closure=str(a.loop_closure),
                      optimized_path_topic=a.optimized_path_topic, fleet=str(a.fleet), robot_id=str(a.robot_id))
    elif a.loop_closure or a.optimized_path_topic or a.fleet:
        ap.error("--loop-closure, --optimized-path-topic and --fleet apply to build_map")
    try:
        read_yaml(kwargs["params_file"])  # a missing or broken file stops here, not in every node
        specs = GRAPHS[a.graph](**kwargs)
    except EXPECTED_ERRORS as exc:
        return report_error("vpr_ros_launch", exc)
    if a.rviz and not rviz2_installed():
        print("[vpr_ros_launch] rviz2 is not installed here (apt install ros-<distro>-rviz2); starting the nodes "
              f"without it (config: {default_rviz_config()})", flush=True)
    for s in specs:
        print(f"[vpr_ros_launch] starting {s.name}: {' '.join(s.command())}", flush=True)
    procs = start_graph(specs)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    managed = [s for s in specs if s.lifecycle and s.autostart]
    if managed and not _autostart(managed):
        stopping.append(True)
    try:
        while not stopping and all(p.poll() is None for p in procs):
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    codes = stop_graph(procs, [s.shutdown_timeouts for s in specs])
    bad = [c for c in codes if c not in (0, -2, 130)]
    return 1 if bad else 0


def _autostart(specs: list) -> bool:
    """Configure and activate managed nodes over their lifecycle services (as the launch files do)."""
    from vpr_ros.ros.lifecycle_client import bring_up

    return bring_up([s.fqn for s in specs],
                    report=lambda fqn, state: print(f"[vpr_ros_launch] {fqn}: {state}", flush=True))


if __name__ == "__main__":
    raise SystemExit(main())
