"""Build launch descriptions from :mod:`vpr_ros.launch_graph` (imported by launch/*.launch.py).

Imports ``launch`` / ``launch_ros`` lazily, so the rest of the package works without them.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

from vpr_ros.launch_graph import NodeSpec

#: (name, default, description); a default of None means "the package's config/<params_yaml>".
Argument = tuple[str, Any, str]


def generate(graph: Callable[..., list[NodeSpec]], arguments: Sequence[Argument], params_yaml: str) -> Any:
    """A LaunchDescription declaring ``arguments`` and starting the nodes of ``graph``."""
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
    from launch_ros.substitutions import FindPackageShare

    def default(value: Any) -> Any:
        if value is None:
            return PathJoinSubstitution([FindPackageShare("vpr_ros"), "config", params_yaml])
        return value

    def nodes(context: Any) -> list[Any]:
        values = {name: LaunchConfiguration(name).perform(context) for name, _, _ in arguments}
        return [to_node(spec) for spec in graph(**values)]

    decls = [DeclareLaunchArgument(name, default_value=default(value), description=text)
             for name, value, text in arguments]
    return LaunchDescription([*decls, OpaqueFunction(function=nodes)])


def to_node(spec: NodeSpec) -> Any:
    """launch_ros Node action of one spec (same name, namespace, parameters, remappings)."""
    from launch_ros.actions import Node

    params: list[Any] = [p for p in (spec.params_file, spec.overrides) if p]
    return Node(package=spec.package, executable=spec.executable, name=spec.name,
                namespace=spec.namespace, parameters=params, remappings=list(spec.remappings),
                output="screen", emulate_tty=True)
