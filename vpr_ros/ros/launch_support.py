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
        return [action for spec in graph(**values) for action in to_actions(spec)]

    decls = [DeclareLaunchArgument(name, default_value=default(value), description=text)
             for name, value, text in arguments]
    return LaunchDescription([*decls, OpaqueFunction(function=nodes)])


def to_actions(spec: NodeSpec) -> list[Any]:
    """launch_ros actions of one spec: a Node (or LifecycleNode, configured and activated when
    ``autostart``) with the same name, namespace, parameters, remappings, log level and
    shutdown escalation times as :meth:`NodeSpec.command`."""
    from launch_ros.actions import LifecycleNode, Node

    try:
        from launch_ros.actions import LifecycleTransition
    except ImportError:  # Humble
        LifecycleTransition = None

    if spec.package != "vpr_ros":  # another package's node (rviz2): its name, namespace and arguments only
        return [Node(package=spec.package, executable=spec.executable, name=spec.name, namespace=spec.namespace,
                     arguments=list(spec.arguments), output="screen")]
    params: list[Any] = [p for p in (spec.params_file, spec.overrides) if p]
    kwargs = dict(package=spec.package, executable=spec.program, name=spec.name, namespace=spec.namespace,
                  parameters=params, remappings=list(spec.remappings), output="screen", emulate_tty=True,
                  ros_arguments=["--log-level", spec.log_level],
                  sigterm_timeout=str(spec.shutdown_timeouts[0]), sigkill_timeout=str(spec.shutdown_timeouts[1]))
    if not spec.lifecycle:
        return [Node(**kwargs)]
    node = LifecycleNode(**kwargs)
    actions: list[Any] = [node]
    if spec.autostart:
        from lifecycle_msgs.msg import Transition

        if LifecycleTransition is not None:
            actions.append(LifecycleTransition(lifecycle_node_names=[spec.fqn], transition_ids=[
                Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE]))
        else:
            actions += _autostart_by_events(node, Transition)
    return actions


def _autostart_by_events(node: Any, transition: Any) -> list[Any]:
    """Humble's launch_ros has no LifecycleTransition: configure by a ChangeState event, and
    activate on the node's arrival in 'inactive' (an OnStateTransition handler)."""
    from launch.actions import EmitEvent, RegisterEventHandler
    from launch.events import matches_action
    from launch_ros.event_handlers import OnStateTransition
    from launch_ros.events.lifecycle import ChangeState

    def change(transition_id: int) -> Any:
        return EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node), transition_id=transition_id))
    return [RegisterEventHandler(OnStateTransition(target_lifecycle_node=node, goal_state="inactive",
                                                   entities=[change(transition.TRANSITION_ACTIVATE)])),
            change(transition.TRANSITION_CONFIGURE)]
