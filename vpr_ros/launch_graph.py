"""The node graphs of the launch files, defined once.

``launch/*.launch.py`` turn these specs into ``launch_ros.actions.Node`` actions;
the ``vpr_ros_launch`` console script starts the very same graph as plain processes
when ``ros2 launch`` is not available (pip-only environments).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

#: executable name (console script in lib/vpr_ros) -> Python module with main()
EXECUTABLES = {"localizer": "vpr_ros.ros.localizer_node", "map_builder": "vpr_ros.ros.map_builder_node"}


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
        return args

    def command(self) -> list[str]:
        """Full command line (this Python interpreter, the node's module)."""
        return [sys.executable, "-m", EXECUTABLES[self.executable], *self.ros_args()]


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


def localize_graph(map_dir: str = "", params_file: str = "", backend: str = "",
                   camera_topic: str = "image", namespace: str = "") -> list[NodeSpec]:
    """localize.launch.py: one localizer node (empty arguments keep the params file's values)."""
    return [NodeSpec("localizer", "localizer", namespace, params_file,
                     _overrides(map_dir=map_dir, backend=backend), _camera_remaps(camera_topic))]


def build_map_graph(map_dir: str = "", params_file: str = "", backend: str = "",
                    camera_topic: str = "image", odom_topic: str = "odom",
                    namespace: str = "") -> list[NodeSpec]:
    """build_map.launch.py: one map_builder node."""
    remaps = _camera_remaps(camera_topic)
    if odom_topic and odom_topic != "odom":
        remaps += (("odom", odom_topic),)
    return [NodeSpec("map_builder", "map_builder", namespace, params_file,
                     _overrides(map_dir=map_dir, backend=backend), remaps)]


GRAPHS = {"localize": localize_graph, "build_map": build_map_graph}


def default_params_file(name: str) -> str:
    """Path of ``config/<name>`` from the installed share directory or the source tree."""
    from pathlib import Path

    try:
        from ament_index_python.packages import get_package_share_directory

        p = Path(get_package_share_directory("vpr_ros")) / "config" / name
        if p.is_file():
            return str(p)
    except Exception:  # noqa: BLE001 - not installed as a ROS package: use the source tree
        pass
    return str(Path(__file__).resolve().parent.parent / "config" / name)


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


def stop_graph(procs: list[Any], timeout: float = 10.0) -> list[int]:
    """SIGINT every process (as ros2 launch does), then SIGTERM/SIGKILL stragglers."""
    import signal
    import subprocess

    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=timeout))
        except subprocess.TimeoutExpired:
            p.terminate()
            try:
                codes.append(p.wait(timeout=3))
            except subprocess.TimeoutExpired:
                p.kill()
                codes.append(p.wait())
    return codes
