"""The shared ``main()`` of the node executables: init, spin, clean shutdown, exit code."""
from __future__ import annotations

import signal
from typing import Callable

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node

from vpr_ros.errors import VprError


def run_node(make: Callable[[], Node], name: str, args: list[str] | None = None,
             before_destroy: Callable[[Node], None] | None = None) -> int:
    """Spin the node built by ``make`` until Ctrl-C / SIGTERM / shutdown; returns an exit code.

    A VprError during start-up (bad parameters, unreadable map) is printed and gives 2.
    ``before_destroy`` runs on the way out (e.g. a final map save).
    """
    rclpy.init(args=args)
    node = None
    code = 0
    try:
        node = make()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except VprError as exc:
        print(f"{name}: {exc}")
        code = 2
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not break the cleanup
        if node is not None:
            try:
                if before_destroy is not None:
                    before_destroy(node)
            except VprError as exc:
                print(f"{name}: {exc}")
                code = code or 1
            node.destroy_node()
        rclpy.try_shutdown()
    return code
