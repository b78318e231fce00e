"""The shared ``main()`` of the node executables: init, spin, clean shutdown, exit code."""
from __future__ import annotations

import os
import select
import signal
import sys
import threading
from typing import Callable, Mapping

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

from vpr_ros.errors import VprError
from vpr_ros.ros.node_base import startup_running


def node_help(name: str, sections: Mapping[str, type], summary: str) -> str:
    """``--help`` of a node executable: how to run it and every parameter with its default and
    description (what ``ros2 param describe`` says once it runs)."""
    import dataclasses
    import textwrap

    lines = [f"usage: ros2 run vpr_ros {name} [--ros-args --params-file FILE -p NAME:=VALUE -r FROM:=TO]", "",
             summary, "", "parameters ('live': settable while running; the others at start-up):"]
    for prefix, cls in sections.items():
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            key = f"{prefix}.{f.name}" if prefix else f.name
            live = " (live)" if f.metadata.get("live") else ""
            lines.append(f"  {key} = {default!r}{live}")
            lines += textwrap.wrap(f.metadata.get("help", ""), 96, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines)


def wants_help(args: list[str] | None) -> bool:
    """-h / --help before any --ros-args (rclpy would otherwise start the node)."""
    argv = sys.argv[1:] if args is None else args
    own = argv[:argv.index("--ros-args")] if "--ros-args" in argv else argv
    return "-h" in own or "--help" in own


#: Longest a signal waits for the spin loop to notice it (s). The loop, not the signal handler,
#: stops the node (see run_node).
SIGNAL_POLL = 0.1


class SignalLatch:
    """Signals turned into bytes in a pipe: no Python code runs in the handler, no lock is taken.

    ``threading.Event.set`` in a handler takes the event's lock; a handler runs on the main thread
    between two bytecodes, so when that thread was inside ``Event.wait`` on the same event
    (holding the lock) the handler waited for itself forever (a 1-in-10 deadlock of double
    SIGTERM in the map builder's drain). A Python function as handler can also be re-entered by
    the next signal before it returns (a burst of signals ends in RecursionError). Here the
    handler is a C builtin that does nothing (``slice(signum, frame)``), and CPython's own C-level
    handler writes each signal's number into the wakeup fd (``signal.set_wakeup_fd``, one per
    process: the latch installed last gets the signals). ``count`` is how many were read."""

    def __init__(self) -> None:
        self.count = 0
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)

    def install(self, *signals: int) -> "SignalLatch":
        """Make ``signals`` land here (call on the main thread)."""
        signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        for sig in signals:
            signal.signal(sig, slice)  # a builtin: returns at once, runs no bytecode, never nests
        return self

    def is_set(self) -> bool:
        """True once a signal has arrived (reads what the pipe holds; never blocks)."""
        try:
            while data := os.read(self._read, 512):
                self.count += len(data)
        except BlockingIOError:
            pass
        return self.count > 0

    def wait(self, timeout: float) -> bool:
        """Sleep until a signal or ``timeout`` (s); True if one has arrived (now or before)."""
        if not self.is_set():
            select.select([self._read], [], [], timeout)
        return self.is_set()


def stop_requests() -> SignalLatch:
    """SIGINT and SIGTERM handlers that only count into the returned latch; call before
    ``rclpy.init`` with ``SignalHandlerOptions.NO``.

    rclpy's own handlers wake a native thread that triggers guard conditions and shuts contexts
    down while the main thread goes on: that thread then runs concurrently with executor and node
    teardown, and rclpy frees the guard-condition list it walks (``unregister_sigint_guard_condition``)
    and the guard conditions themselves without a lock — under load that ended in SIGSEGV during
    shutdown. Chained to CPython's handler it also raises ``KeyboardInterrupt`` at any bytecode,
    including inside message conversion. Here a signal is a flag the main thread reads; every
    shutdown step then runs on the main thread, in order.
    """
    return SignalLatch().install(signal.SIGINT, signal.SIGTERM)


def stop_executor(executor: MultiThreadedExecutor) -> None:
    """Shut the executor down once its callbacks in flight have returned (none starts: the spin
    loop has ended). rclpy's ``shutdown`` does not wait for them: its own wait is skipped (the
    shutdown flag is set before it is tested), and only Kilted's override joins the thread pool,
    so on Jazzy a callback could still run while the node is finished and destroyed. The pool is
    rclpy's ``_executor`` attribute (Humble to Kilted); it is joined here *before* the executor
    shuts down: a task still queued there ends by triggering the executor's guard condition, which
    ``shutdown`` destroys, and the InvalidHandle it then raises is stored in the task and printed
    at exit as "The following exception was never retrieved" (rclpy ``executors.py`` handler)."""
    pool = getattr(executor, "_executor", None)
    if pool is not None and hasattr(pool, "shutdown"):
        pool.shutdown(wait=True)
    executor.shutdown(timeout_sec=0)


def run_node(make: Callable[[], Node], name: str, args: list[str] | None = None,
             before_destroy: Callable[[Node], None] | None = None) -> int:
    """Spin the node built by ``make`` until Ctrl-C / SIGTERM / shutdown; returns an exit code.

    A VprError during start-up (bad parameters, unreadable map) is printed and gives 2.
    ``before_destroy`` runs on the way out (e.g. the map builder's final save) while the context
    is still up; further SIGINT / SIGTERM (a second Ctrl-C, ros2 launch's escalation) do not cut
    it short (the map builder's own handlers make them stop its encoding). The context is shut
    down last, on this thread.
    """
    if hasattr(signal, "SIGXFSZ"):  # a file-size limit makes writes fail (a MapError), not kill the node
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    requested = stop_requests()
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stopped = threading.Event()
    rclpy.get_default_context().on_shutdown(stopped.set)
    node = None
    code = 0
    try:
        node = make()
        # two threads: callbacks of the node's default group still run one at a time, and one in a
        # group of its own (the map builder's save service) does not hold them up
        executor = MultiThreadedExecutor(num_threads=2)
        executor.add_node(node)
        try:
            while not requested.is_set() and rclpy.ok():
                executor.spin_once(timeout_sec=SIGNAL_POLL)
        finally:
            if not getattr(node, "transition_running", ""):  # its pool would wait for a running transition
                stop_executor(executor)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except VprError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        code = 2
    except Exception:
        # Something else shut the context down (a node calling rclpy.shutdown()) between the
        # executor's ok() check and its wait-set creation: rclpy then raises RCLError instead of
        # ExternalShutdownException. Anything raised while the context stays alive is a bug.
        if not stopped.wait(timeout=2.0) and rclpy.ok():
            raise
    finally:
        error = getattr(node, "startup_error", None)
        if isinstance(error, VprError):
            print(f"{name}: {error}", file=sys.stderr)
            code = 2
        elif error is not None:
            print(f"{name}: start-up failed unexpectedly: {type(error).__name__}: {error}", file=sys.stderr)
            code = 1
        if node is not None and startup_running(node):
            # stopped while the model is still being exported or loaded: do not wait for it (its
            # temporaries are removed by the next start). A plain node's start-up thread is a daemon
            # and cleans up after itself; a lifecycle transition runs on an executor thread, which
            # the interpreter would join at exit, so the process ends here.
            if getattr(node, "startup_cancelled", None) is not None:
                node.startup_cancelled.set()
            if getattr(node, "transition_running", ""):
                print(f"{name}: stopped during '{node.transition_running}'", file=sys.stderr, flush=True)
                sys.stdout.flush()
                os._exit(code)
            node = None
        if node is not None:
            try:
                if before_destroy is not None and error is None:
                    before_destroy(node)
            except VprError as exc:
                print(f"{name}: {exc}", file=sys.stderr)
                code = code or 1
            try:
                node.destroy_node()
            except VprError as exc:
                print(f"{name}: {exc}", file=sys.stderr)
                code = code or 1
        rclpy.try_shutdown()
        # Python's finalisation puts SIG_DFL back in place of handlers it installed, so a SIGTERM
        # arriving now (ros2 launch escalating on a loaded machine) would turn a clean exit into -15;
        # the work is done, so later signals are ignored (SIGKILL still ends the process)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
    return code
