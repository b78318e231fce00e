"""Drive a managed (lifecycle) node through transitions over its real services
(``<node>/change_state``, ``<node>/get_state``), as ``ros2 lifecycle set`` does."""
from __future__ import annotations

from typing import Callable, Sequence

import rclpy
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.node import Node

#: transition names accepted by :func:`change_states` (as ``ros2 lifecycle set`` spells them)
TRANSITIONS = {"configure": Transition.TRANSITION_CONFIGURE, "activate": Transition.TRANSITION_ACTIVATE,
               "deactivate": Transition.TRANSITION_DEACTIVATE, "cleanup": Transition.TRANSITION_CLEANUP,
               "shutdown": Transition.TRANSITION_UNCONFIGURED_SHUTDOWN}


def _call(client_node: Node, client, request, timeout: float):  # type: ignore[no-untyped-def]
    if not client.wait_for_service(timeout_sec=timeout):
        return None
    future = client.call_async(request)
    rclpy.spin_until_future_complete(client_node, future, timeout_sec=timeout)
    return future.result()


def change_states(client_node: Node, node_fqn: str, transitions: Sequence[str], timeout: float = 60.0) -> tuple[bool, str]:
    """Request each transition in turn; returns (all succeeded, state label or what failed)."""
    change = client_node.create_client(ChangeState, f"{node_fqn}/change_state")
    try:
        for name in transitions:
            req = ChangeState.Request()
            req.transition.id = TRANSITIONS[name]
            res = _call(client_node, change, req, timeout)
            if res is None:
                return False, f"{node_fqn}: no answer to '{name}' within {timeout:.0f} s"
            if not res.success:
                return False, f"{node_fqn}: transition '{name}' failed (see the node's log)"
        return True, state_of(client_node, node_fqn, timeout)
    finally:
        client_node.destroy_client(change)


def state_of(client_node: Node, node_fqn: str, timeout: float = 10.0) -> str:
    """The node's current state label ('unconfigured', 'inactive', 'active', ...), or '' if unknown."""
    get = client_node.create_client(GetState, f"{node_fqn}/get_state")
    try:
        res = _call(client_node, get, GetState.Request(), timeout)
        return res.current_state.label if res is not None else ""
    finally:
        client_node.destroy_client(get)


def bring_up(node_fqns: Sequence[str], timeout: float = 120.0,
             report: Callable[[str, str], None] | None = None) -> bool:
    """Configure and activate each managed node (as the launch files' autostart does), from a
    short-lived client node in its own rclpy context; ``report(node, state)`` after each."""
    rclpy.init()
    try:
        client = rclpy.create_node("vpr_ros_launch_lifecycle")
        ok = True
        for fqn in node_fqns:
            done, state = change_states(client, fqn, ["configure", "activate"], timeout=timeout)
            if report is not None:
                report(fqn, state)
            ok = ok and done
        client.destroy_node()
        return ok
    finally:
        rclpy.try_shutdown()
