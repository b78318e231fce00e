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


#: transition -> (state it starts from, state it is carried out in, state it ends in)
STATES = {"configure": ("unconfigured", "configuring", "inactive"), "activate": ("inactive", "activating", "active"),
          "deactivate": ("active", "deactivating", "inactive"), "cleanup": ("inactive", "cleaningup", "unconfigured"),
          "shutdown": ("unconfigured", "shuttingdown", "finalized")}
_RETRY_EVERY = 5.0  # s without an answer before the node's state is asked


def change_states(client_node: Node, node_fqn: str, transitions: Sequence[str], timeout: float = 60.0) -> tuple[bool, str]:
    """Request each transition in turn; returns (all succeeded, state label or what failed).

    A service request or its response can be lost while DDS is still matching the client with the
    server (a busy machine makes that window long): without an answer within a few seconds the
    node's state is asked; the transition counts as done once the node is in its end state, is
    waited for while the node is carrying it out, and is requested again while the node is still
    in its start state. ``timeout`` bounds each transition."""
    import time

    change = client_node.create_client(ChangeState, f"{node_fqn}/change_state")
    try:
        for name in transitions:
            start, during, end = STATES[name]
            req = ChangeState.Request()
            req.transition.id = TRANSITIONS[name]
            deadline = time.monotonic() + timeout
            if not change.wait_for_service(timeout_sec=timeout):
                return False, f"{node_fqn}: no change_state service within {timeout:.0f} s"
            futures = [change.call_async(req)]
            while True:
                rclpy.spin_until_future_complete(client_node, futures[-1], timeout_sec=_RETRY_EVERY)
                answered = [f.result() for f in futures if f.done() and f.result() is not None]
                if any(r.success for r in answered):
                    break
                state = state_of(client_node, node_fqn, _RETRY_EVERY)
                if state == end:
                    break
                if answered and state != during:
                    return False, f"{node_fqn}: transition '{name}' failed (see the node's log)"
                if time.monotonic() > deadline:
                    return False, f"{node_fqn}: no answer to '{name}' within {timeout:.0f} s (state '{state}')"
                if state == start:
                    futures.append(change.call_async(req))
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
