"""What the localizer and the map builder share: camera subscriptions (one transport per
camera), QoS profiles, diagnostics on an absolute topic, logging that stays quiet after rclpy
has shut down, and the lifecycle transitions (plain and managed variants of each node)."""
from __future__ import annotations

import logging
import math
import sys
import threading
import time
import weakref
from typing import Any, Callable, Iterable

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image

from vpr_ros.errors import VprError

#: s: a WARN for failed frames or refused input clears this long after the last one
PROBLEM_WINDOW = 30.0
#: s: a message stamped further ahead of the node's clock is refused (a broken clock on the sender;
#: past stamps are normal: a bag replayed without use_sim_time)
STAMP_AHEAD_TOLERANCE = 60.0
LEVEL_NAMES = {DiagnosticStatus.OK: "OK", DiagnosticStatus.WARN: "WARN", DiagnosticStatus.ERROR: "ERROR"}


def image_qos(name: str, depth: int = 10) -> QoSProfile:
    """'sensor_data' (best effort, depth 5) or 'reliable' (``depth``: the map builder keeps more,
    so that a burst of frames is not overwritten in the DDS history before it is taken)."""
    if name == "sensor_data":
        return qos_profile_sensor_data
    return QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE)


#: Services keep up to this many requests waiting (rclpy's default keeps 10: of 300 concurrent
#: vpr/relocalize calls 13 were answered); each answer is quick, so a deep queue costs nothing.
SERVICE_QOS = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)


def pose_qos(name: str) -> QoSProfile:
    """Pose streams keep more history than images (they are small and paired later)."""
    reliability = ReliabilityPolicy.BEST_EFFORT if name == "sensor_data" else ReliabilityPolicy.RELIABLE
    return QoSProfile(depth=100, reliability=reliability)


def sibling_topic(camera_topic: str, name: str) -> str:
    """'cam0/image' -> 'cam0/<name>'; '/robot/cam/image' -> '/robot/cam/<name>'; 'image' -> '<name>'
    (the image_transport convention for camera_info)."""
    head, sep, _ = camera_topic.rpartition("/")
    return f"{head}/{name}" if sep and head else (f"/{name}" if sep else name)


def per_camera(values: list[str], cameras: list[str], default: Callable[[str], str]) -> dict[str, str]:
    """camera -> topic from a parameter list in camera order ('' or missing = ``default(camera)``)."""
    return {c: (values[i] if i < len(values) and values[i] else default(c)) for i, c in enumerate(cameras)}


def intrinsics_of(msg: Any) -> Any:
    """sensor_msgs/CameraInfo -> CameraIntrinsics (raises VprError for an uncalibrated camera)."""
    from vpr_ros.verification.features import CameraIntrinsics

    return CameraIntrinsics.from_k(list(msg.k), int(msg.width), int(msg.height))


class CoreLogBridge(logging.Handler):
    """Forwards the ROS-free core's ``logging`` records (logger 'vpr_ros': backend choice, ONNX
    export, TensorRT build progress, ...) to a node's ROS logger, so that they reach the
    console and /rosout like the node's own messages."""

    def __init__(self, node: "VprNodeMixin") -> None:
        super().__init__(logging.INFO)
        self._node = weakref.ref(node)

    def emit(self, record: logging.LogRecord) -> None:
        node = self._node()
        if node is None:
            return
        level = ("error" if record.levelno >= logging.ERROR else "warning" if record.levelno >= logging.WARNING
                 else "info")
        try:
            node.say(level, f"[{record.name}] {record.getMessage()}")
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            pass


def attach_core_logs(node: "VprNodeMixin") -> CoreLogBridge:
    """Route the core's log records to ``node`` while it lives (returns the handler)."""
    core = logging.getLogger("vpr_ros")
    core.setLevel(logging.INFO)
    bridge = CoreLogBridge(node)
    core.addHandler(bridge)
    weakref.finalize(node, core.removeHandler, bridge)
    return bridge


class VprNodeMixin:
    """Helpers mixed into both nodes (which are rclpy ``Node`` or ``LifecycleNode`` subclasses)."""

    def context_ok(self) -> bool:
        node: Any = self
        return rclpy.ok(context=node.context)

    def say(self, level: str, text: str, throttle: float | None = None) -> None:
        """Log through ROS while the context is up; afterwards to stderr (no rosout errors).

        ``throttle`` (s): at most one line per that period from the caller's line of code. Done
        here, not by rclpy: rclpy fixes a call site's severity and throttle at its first call and
        raises on any other (this method is one call site for every message)."""
        node: Any = self
        if throttle:
            caller = sys._getframe(1)
            key = (caller.f_code.co_filename, caller.f_lineno, level)
            said: dict = self.__dict__.setdefault("_said_at", {})
            now = time.monotonic()
            if now - said.get(key, -math.inf) < throttle:
                return
            said[key] = now
        if self.context_ok():
            lg = node.get_logger()  # rclpy also fixes the severity per call site: one line for each
            try:
                if level == "info":
                    lg.info(text)
                elif level == "debug":
                    lg.debug(text)
                elif level == "warning":
                    lg.warning(text)
                else:
                    lg.error(text)
                return
            except Exception:  # noqa: BLE001 - the context went down between the check and the call
                pass
        if level != "debug":
            print(f"[{level.upper()}] [{time.time():.6f}] [{node.get_name()}]: {text}", file=sys.stderr, flush=True)

    def guarded(self, fn: Callable[..., Any], service: bool = False) -> Callable[..., Any]:
        """``fn`` as a ROS callback that never raises into the executor: an unexpected error is
        logged and counted as the node's error (dropped once ROS has shut down); a ``service``
        callback then answers ``success: false`` with the reason."""
        def call(*args: Any) -> Any:
            try:
                return fn(*args)
            except Exception as exc:  # noqa: BLE001 - one bad message or moment must not end the node
                what = f"{getattr(fn, '__name__', 'callback')} failed: {type(exc).__name__}: {exc}"
                if self.context_ok():
                    error = getattr(self, "_error", None)
                    error(what) if error is not None else self.say("error", what)
                if service and len(args) > 1:
                    resp = args[1]
                    resp.success, resp.message = False, what
                    return resp
                return None
        call.__name__ = getattr(fn, "__name__", "callback")
        return call

    def subscribe_cameras(self, topics: Iterable[str], transport: str, qos: QoSProfile,
                          callback: Callable[[str, Any], None]) -> list[Any]:
        """One subscription per camera: ``<topic>`` (Image) or ``<topic>/compressed`` (CompressedImage)."""
        node: Any = self
        callback = self.guarded(callback)
        subs = []
        for topic in topics:
            if transport == "compressed":
                subs.append(node.create_subscription(CompressedImage, f"{topic}/compressed",
                                                     lambda m, c=topic: callback(c, m), qos))
            else:
                subs.append(node.create_subscription(Image, topic, lambda m, c=topic: callback(c, m), qos))
        return subs

    def drop_subscriptions(self, subs: list[Any]) -> None:
        node: Any = self
        for s in subs:
            node.destroy_subscription(s)
        subs.clear()

    def problem_age(self, counts: tuple[int, ...]) -> float | None:
        """Seconds since any of ``counts`` (failure counters) last grew, as seen by successive calls
        (None: never). A WARN for failed frames or refused input lasts :data:`PROBLEM_WINDOW` s after
        the last one, then clears (the counters and the last message stay in the values)."""
        d = self.__dict__
        now = time.monotonic()
        if counts != d.get("_problem_counts", tuple(0 for _ in counts)):
            d["_problem_counts"], d["_problem_at"] = counts, now
        at = d.get("_problem_at")
        return None if at is None else now - at

    def lifecycle_state(self) -> str:
        """The managed node's state label ('unconfigured', 'inactive', 'active', ...), or 'unmanaged'."""
        machine = getattr(self, "_state_machine", None)
        if machine is None:
            return "unmanaged"
        try:
            return str(machine.current_state[1])
        except Exception:  # noqa: BLE001 - rclpy internals differ between distributions
            return "unknown"

    def stamp_ahead(self, stamp: float) -> float:
        """Seconds ``stamp`` lies ahead of the node's clock (0 while use_sim_time waits for /clock)."""
        node: Any = self
        now = node.get_clock().now().nanoseconds * 1e-9
        return 0.0 if now == 0.0 else stamp - now

    def sim_time_without_clock(self) -> bool:
        """use_sim_time is true and no /clock message has arrived (ROS time still 0)."""
        node: Any = self
        try:
            sim = bool(node.get_parameter("use_sim_time").value)
        except Exception:  # noqa: BLE001 - parameter not declared (never on rclpy nodes)
            return False
        return sim and node.get_clock().now().nanoseconds == 0

    def publish_status(self, pub: Any, kind: str, level: bytes, message: str, hardware_id: str,
                       values: dict[str, Any]) -> None:
        """One DiagnosticArray with one status named '<fully qualified node name>: <kind>' (two
        nodes in different namespaces never share a name), the lifecycle state among its values, and
        a WARN while use_sim_time waits for /clock; nothing after shutdown."""
        node: Any = self
        if not self.context_ok():
            return
        if startup_running(self):
            level, message = max(level, DiagnosticStatus.WARN), "starting: opening the model (a first start exports it)"
        if self.sim_time_without_clock():
            message = "use_sim_time is true but no /clock has arrived (is the bag played with --clock?); " + message
            level = max(level, DiagnosticStatus.WARN)
        st = DiagnosticStatus(level=level, name=f"{node.get_fully_qualified_name()}: {kind}", message=message,
                              hardware_id=hardware_id)
        values = {"lifecycle_state": self.lifecycle_state(), **values}
        build = getattr(getattr(self, "backend", None), "build_status", "")
        if build:  # a TensorRT engine built in the background (runtime/engine_swap.py)
            values["engine_build"] = build
        st.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        arr = DiagnosticArray(status=[st])
        arr.header.stamp = node.get_clock().now().to_msg()
        try:
            pub.publish(arr)
        except Exception:  # noqa: BLE001 - the context went down between the check and the call
            pass

    def steady_timer(self, period: float, callback: Callable[[], Any], **kwargs: Any) -> Any:
        """A timer on the steady clock: it fires whatever ROS time does (with use_sim_time and no
        /clock, a ROS-time timer never would: no diagnostics, no warning)."""
        from rclpy.clock import Clock, ClockType

        node: Any = self
        return node.create_timer(period, self.guarded(callback), clock=Clock(clock_type=ClockType.STEADY_TIME), **kwargs)

    def safe_publish(self, pub: Any, msg: Any) -> None:
        """Publish unless the context has shut down (worker threads race the shutdown)."""
        if not self.context_ok():
            return
        try:
            pub.publish(msg)
        except Exception:  # noqa: BLE001 - context invalidated concurrently
            if self.context_ok():
                raise


def lifecycle_class(core: type, lifecycle_name: str) -> type:
    """A managed (``rclpy.lifecycle``) variant of a node core.

    ``core`` provides ``_setup()`` (parameters, publishers, services: no heavy work),
    ``_configure()`` (model, map, worker), ``_activate()`` (subscriptions), ``_deactivate()``,
    ``_cleanup()`` (release everything ``_configure`` made) and ``_shutdown()``. The plain node
    runs setup, configure and activate in its constructor; this one on transitions.
    """
    from rclpy.callback_groups import ReentrantCallbackGroup
    from rclpy.lifecycle import LifecycleNode, LifecycleNodeMixin, TransitionCallbackReturn

    def __init__(self: Any, backend: Any = None, background: bool = False, **kwargs: Any) -> None:
        # the lifecycle services in a group of their own: while a transition loads a model (minutes
        # on a first export), get_state and the parameter services (default group) still answer
        Node.__init__(self, lifecycle_name, **kwargs)
        LifecycleNodeMixin.__init__(self, enable_communication_interface=True, callback_group=ReentrantCallbackGroup())
        self._injected_backend = backend
        attach_core_logs(self)
        self._setup()

    def _transition(step: str) -> Callable[[Any, Any], Any]:
        def handler(self: Any, state: Any) -> Any:
            self.transition_running = step  # run_node does not wait for it when the node is stopped
            try:
                getattr(self, f"_{step}")()
            except VprError as exc:
                self.say("error", f"{step} failed: {exc}")
                return TransitionCallbackReturn.FAILURE
            finally:
                self.transition_running = ""
            return TransitionCallbackReturn.SUCCESS
        handler.__name__ = f"on_{step}"
        return handler

    def on_error(self: Any, state: Any) -> Any:
        self.say("error", f"error in state '{state.label}': releasing resources")
        try:
            self._cleanup()
        except VprError:
            pass
        return TransitionCallbackReturn.SUCCESS

    body = {"__init__": __init__, "on_error": on_error, "__module__": core.__module__, "__doc__": f"Managed variant of {core.__name__} "
            "(configure: model + map; activate: subscriptions; deactivate / cleanup release them)."}
    for step in ("configure", "activate", "deactivate", "cleanup", "shutdown"):
        body[f"on_{step}"] = _transition(step)
    return type(f"{core.__name__.removesuffix('Core')}LifecycleNode", (core, LifecycleNode), body)


def plain_init(node: Any, name: str, backend: Any, kwargs: dict[str, Any], background: bool = False) -> None:
    """Constructor body of the plain (unmanaged) variant: setup, configure, activate.

    ``background`` (the node executables): configure and activate run on a thread of their own
    once the node spins, so parameter services answer and SIGINT stops the node at once while the
    model is exported or loaded; a VprError there ends the node (exit code 2, see run_node)."""
    Node.__init__(node, name, **kwargs)
    node._injected_backend = backend
    attach_core_logs(node)
    node._setup()
    node.startup_error = None
    node.startup_cancelled = threading.Event()
    if background:
        node._startup = threading.Thread(target=_start_up, args=(node,), name="vpr-startup", daemon=True)
        node._startup.start()
        return
    try:
        node._configure()
        node._activate()
    except BaseException:
        node._cleanup()
        raise


def _start_up(node: Any) -> None:
    """Body of the start-up thread: configure + activate; on failure record it and shut the
    node's context down (run_node reports it); abandoned quietly when the node stops meanwhile."""
    try:
        node.say("info", "starting: opening the model (a first start may export it; the node answers meanwhile)")
        node._configure()
        if node.startup_cancelled.is_set():
            node._cleanup()
            return
        node._activate()
        node.say("info", "started")
    except BaseException as exc:  # noqa: BLE001 - reported by run_node
        if node.startup_cancelled.is_set():
            return
        node.startup_error = exc
        try:
            node._cleanup()
        except Exception:  # noqa: BLE001 - the first error is the one to report
            pass
        node.context.try_shutdown()


def startup_running(node: Any) -> bool:
    """The background start-up thread, or a lifecycle transition (e.g. a configure exporting the
    model), is still at work."""
    t = getattr(node, "_startup", None)
    return (t is not None and t.is_alive()) or bool(getattr(node, "transition_running", ""))


LEVEL_OK, LEVEL_WARN, LEVEL_ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR
__all__ = ["DiagnosticArray", "LEVEL_ERROR", "LEVEL_OK", "LEVEL_WARN", "VprNodeMixin", "image_qos",
           "lifecycle_class", "plain_init", "pose_qos"]
