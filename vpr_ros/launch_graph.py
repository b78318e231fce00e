"""The node graphs of the launch files, defined once.

``launch/*.launch.py`` turn these specs into ``launch_ros.actions.Node`` actions;
the ``vpr_ros_launch`` console script starts the very same graph as plain processes
when ``ros2 launch`` is not available (pip-only environments).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

#: executable name (console script in lib/vpr_ros) -> (Python module, function) it runs
EXECUTABLES = {
    "localizer": ("vpr_ros.ros.localizer_node", "main"),
    "localizer_lifecycle": ("vpr_ros.ros.localizer_node", "main_lifecycle"),
    "map_builder": ("vpr_ros.ros.map_builder_node", "main"),
    "map_builder_lifecycle": ("vpr_ros.ros.map_builder_node", "main_lifecycle"),
    "fleet": ("vpr_ros.ros.fleet_node", "main"),
}
#: Seconds ros2 launch waits after SIGINT before SIGTERM, and after SIGTERM before SIGKILL, for
#: the map builder: time to encode what is pending (what it cannot finish stays on disk for its
#: next start: nothing accepted depends on these numbers).
MAP_BUILDER_SHUTDOWN_TIMEOUTS = (30, 10)
#: The same for the localizer. It stops in well under a second on an idle machine; a SIGTERM after
#: the SIGINT changes nothing (it is counted, not obeyed: see node_main.SignalLatch), so these
#: bound only how long ros2 launch waits before SIGKILL on a machine too loaded to finish.
LOCALIZER_SHUTDOWN_TIMEOUTS = (15, 15)
LOG_LEVELS = ("debug", "info", "warn", "error", "fatal")


@dataclass(frozen=True)
class NodeSpec:
    """One node of a graph, in launch_ros terms."""

    executable: str
    name: str
    namespace: str = ""
    params_file: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)
    remappings: tuple[tuple[str, str], ...] = ()
    package: str = "vpr_ros"
    lifecycle: bool = False          # the managed variant (<executable>_lifecycle)
    autostart: bool = False          # lifecycle: configure and activate it right after start
    log_level: str = "info"
    shutdown_timeouts: tuple[int, int] = (5, 5)  # ros2 launch: SIGINT -> SIGTERM -> SIGKILL (s)
    arguments: tuple[str, ...] = ()  # command-line arguments of a node of another package (rviz2 -d ...)

    @property
    def program(self) -> str:
        """Console script (lib/vpr_ros) that runs this node."""
        return f"{self.executable}_lifecycle" if self.lifecycle else self.executable

    @property
    def fqn(self) -> str:
        """Fully qualified node name, e.g. '/robot1/localizer'."""
        ns = "/" + self.namespace.strip("/") if self.namespace.strip("/") else ""
        return f"{ns}/{self.name}"

    def ros_args(self) -> list[str]:
        """The ``--ros-args`` part of a command line running this node."""
        args = ["--ros-args", "-r", f"__node:={self.name}"]
        if self.namespace:
            args += ["-r", f"__ns:=/{self.namespace.strip('/')}"]
        if self.params_file:
            args += ["--params-file", self.params_file]
        for k, v in self.overrides.items():
            args += ["-p", f"{k}:={_param_literal(v)}"]
        for a, b in self.remappings:
            args += ["-r", f"{a}:={b}"]
        if self.log_level != "info":
            args += ["--log-level", self.log_level]
        return args

    def command(self) -> list[str]:
        """Full command line (this Python interpreter, the node's entry point; another package's
        executable, e.g. rviz2, by its name)."""
        if self.package != "vpr_ros":
            return [self.executable, *self.arguments, "--ros-args", "-r", f"__node:={self.name}"]
        module, func = EXECUTABLES[self.program]
        return [sys.executable, "-c", f"from {module} import {func}; raise SystemExit({func}())",
                *self.ros_args()]


def _param_literal(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_param_literal(x) for x in v) + "]"
    return str(v)


def _camera_remaps(camera_topic: str) -> tuple[tuple[str, str], ...]:
    if not camera_topic or camera_topic == "image":
        return ()
    return (("image", camera_topic), ("image/compressed", f"{camera_topic}/compressed"))


def _overrides(**kw: Any) -> dict[str, Any]:
    return {k: v for k, v in kw.items() if v not in ("", None)}


def as_bool(value: Any, name: str) -> bool:
    """A launch argument's true/false (launch passes strings)."""
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", ""):
        return False
    raise ValueError(f"launch argument {name}: expected true or false, got {value!r}")


def _common(use_sim_time: Any, log_level: str, lifecycle: Any, autostart: Any) -> dict[str, Any]:
    if log_level not in LOG_LEVELS:
        raise ValueError(f"launch argument log_level: {log_level!r} is not one of {', '.join(LOG_LEVELS)}")
    return {"log_level": log_level, "lifecycle": as_bool(lifecycle, "lifecycle"),
            "autostart": as_bool(autostart, "autostart"),
            "sim": {"use_sim_time": True} if as_bool(use_sim_time, "use_sim_time") else {}}


def localize_graph(map_dir: str = "", params_file: str = "", backend: str = "",
                   camera_topic: str = "image", namespace: str = "", use_sim_time: Any = "false",
                   log_level: str = "info", lifecycle: Any = "false", autostart: Any = "true",
                   transport: str = "", weights: str = "", rviz: Any = "false") -> list[NodeSpec]:
    """localize.launch.py: one localizer node (empty arguments keep the params file's values), and
    RViz with the package's configuration when ``rviz``."""
    c = _common(use_sim_time, log_level, lifecycle, autostart)
    return _with_rviz([NodeSpec("localizer", "localizer", namespace, params_file,
                     {**_overrides(map_dir=map_dir, backend=backend, transport=transport,
                                   **{"model.weights": weights}), **c["sim"]}, _camera_remaps(camera_topic),
                     lifecycle=c["lifecycle"], autostart=c["autostart"], log_level=c["log_level"],
                     shutdown_timeouts=LOCALIZER_SHUTDOWN_TIMEOUTS)], rviz, namespace)


def build_map_graph(map_dir: str = "", params_file: str = "", backend: str = "",
                    camera_topic: str = "image", odom_topic: str = "odom",
                    namespace: str = "", use_sim_time: Any = "false", log_level: str = "info",
                    lifecycle: Any = "false", autostart: Any = "true", loop_closure: Any = "false",
                    optimized_path_topic: str = "", transport: str = "", weights: str = "",
                    rviz: Any = "false", fleet: Any = "false", robot_id: Any = "0") -> list[NodeSpec]:
    """build_map.launch.py: one map_builder node, given time to encode what is pending on shutdown;
    ``loop_closure`` turns on live loop closure (``loop_closure.enabled``) and
    ``optimized_path_topic`` the poses that follow a SLAM back end's path (empty: params file);
    ``fleet`` adds the fleet node beside it (same namespace, following the same map, ``robot_id``)."""
    c = _common(use_sim_time, log_level, lifecycle, autostart)
    remaps = _camera_remaps(camera_topic)
    if odom_topic and odom_topic != "odom":
        remaps += (("odom", odom_topic),)
    slam: dict[str, Any] = {"loop_closure.enabled": True} if as_bool(loop_closure, "loop_closure") else {}
    specs = [NodeSpec("map_builder", "map_builder", namespace, params_file,
                      {**_overrides(map_dir=map_dir, backend=backend, optimized_path_topic=optimized_path_topic,
                                    transport=transport, **{"model.weights": weights}),
                       **slam, **c["sim"]}, remaps,
                      lifecycle=c["lifecycle"], autostart=c["autostart"], log_level=c["log_level"],
                      shutdown_timeouts=MAP_BUILDER_SHUTDOWN_TIMEOUTS)]
    if as_bool(fleet, "fleet"):
        try:
            rid = int(str(robot_id))
        except ValueError:
            raise ValueError(f"launch argument robot_id:={robot_id!r} is not an integer") from None
        if not 0 <= rid <= 65535:
            raise ValueError(f"launch argument robot_id:={rid} must be 0..65535")
        # the map builder's params file gives it map_dir (and verification.*) too; the rest it ignores
        specs.append(NodeSpec("fleet", "fleet", namespace, params_file,
                              {**_overrides(map_dir=map_dir), "robot_id": rid, **c["sim"]},
                              log_level=c["log_level"]))
    return _with_rviz(specs, rviz, namespace)


def rviz_spec(namespace: str = "") -> NodeSpec:
    """RViz 2 with the package's ``rviz/vpr_ros.rviz`` (map keyframes, matches, pose, debug image)."""
    return NodeSpec("rviz2", "rviz2", namespace, package="rviz2", arguments=("-d", default_rviz_config()))


def _with_rviz(specs: list[NodeSpec], rviz: Any, namespace: str) -> list[NodeSpec]:
    """``specs`` plus RViz; with ``rviz`` true and no rviz2 installed, ValueError before any node
    starts (ros2 launch would otherwise start the others, then fail on rviz2 and leave them running)."""
    if not as_bool(rviz, "rviz"):
        return specs
    if not rviz2_installed():
        raise ValueError("launch argument rviz:=true but rviz2 is not installed (no package 'rviz2' in the ament "
                         "index and no rviz2 on PATH): install it (sudo apt install ros-$ROS_DISTRO-rviz2) or "
                         "launch without rviz:=true; no node was started")
    return specs + [rviz_spec(namespace)]


def rviz2_installed() -> bool:
    """rviz2 can be started: its package is in the ament index, or an ``rviz2`` executable is on PATH."""
    import shutil

    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_prefix

        try:
            get_package_prefix("rviz2")
            return True
        except (PackageNotFoundError, OSError, ValueError):  # not indexed, or no AMENT_PREFIX_PATH at all
            pass
    except ImportError:
        pass
    return shutil.which("rviz2") is not None


GRAPHS = {"localize": localize_graph, "build_map": build_map_graph}


def default_params_file(name: str, folder: str = "config") -> str:
    """Path of ``<folder>/<name>`` (config/ by default) from the installed share directory or the
    source tree."""
    from pathlib import Path

    try:
        from ament_index_python.packages import get_package_share_directory

        p = Path(get_package_share_directory("vpr_ros")) / folder / name
        if p.is_file():
            return str(p)
    except Exception:  # noqa: BLE001 - not installed as a ROS package: use the source tree
        pass
    return str(Path(__file__).resolve().parent.parent / folder / name)


def default_rviz_config() -> str:
    """The package's RViz configuration (``rviz/vpr_ros.rviz``)."""
    return default_params_file("vpr_ros.rviz", "rviz")


def start_graph(specs: list[NodeSpec], env: dict[str, str] | None = None,
                log_dir: str | None = None) -> list[Any]:
    """Start every node of a graph as a subprocess; returns the Popen objects.

    With ``log_dir``, each node's output goes to ``<log_dir>/<name>.log``; otherwise
    it is inherited (shown on the terminal, like ``output='screen'``).
    """
    import os
    import subprocess
    from pathlib import Path

    procs = []
    for spec in specs:
        out: Any = None
        if log_dir:
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            out = open(Path(log_dir) / f"{spec.name}.log", "wb")  # noqa: SIM115 - owned by the process
        procs.append(subprocess.Popen(spec.command(), env={**os.environ, **(env or {})},
                                      stdout=out, stderr=subprocess.STDOUT if out else None))
    return procs


def stop_graph(procs: list[Any], timeouts: list[tuple[int, int]] | None = None) -> list[int]:
    """Stop every process as ros2 launch does: SIGINT, then SIGTERM after ``timeouts[i][0]`` s,
    then SIGKILL after another ``timeouts[i][1]`` s (default 5 and 5)."""
    import signal
    import subprocess

    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    codes = []
    for i, p in enumerate(procs):
        sigterm_after, sigkill_after = timeouts[i] if timeouts else (5, 5)
        try:
            codes.append(p.wait(timeout=sigterm_after))
        except subprocess.TimeoutExpired:
            p.terminate()
            try:
                codes.append(p.wait(timeout=sigkill_after))
            except subprocess.TimeoutExpired:
                p.kill()
                codes.append(p.wait())
    return codes
