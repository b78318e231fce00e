"""The core must import without rclpy (a robot may run it outside ROS, tests need it)."""
from __future__ import annotations

import subprocess
import sys

import pytest

CORE_MODULES = [
    "vpr_ros.config", "vpr_ros.errors", "vpr_ros.images", "vpr_ros.geometry",
    "vpr_ros.localization", "vpr_ros.loop_closure", "vpr_ros.frame_slots", "vpr_ros.evaluation",
    "vpr_ros.datasets", "vpr_ros.launch_graph", "vpr_ros.mapping.map_store",
    "vpr_ros.mapping.builder", "vpr_ros.mapping.keyframes", "vpr_ros.runtime.base",
    "vpr_ros.runtime.preprocess", "vpr_ros.runtime.factory", "vpr_ros.runtime.torch_backend",
    "vpr_ros.model.factory", "vpr_ros.demo.synthetic", "vpr_ros.cli.demo", "vpr_ros.cli.launch",
    "vpr_ros.cli.build_map", "vpr_ros.cli.demo_slam", "vpr_ros.mapping.live_loops", "vpr_ros.mapping.sessions",
    "vpr_ros.mapping.reanchor", "vpr_ros.mapping.store.database", "vpr_ros.demo.slam_drive",
    "vpr_ros.demo.pose_graph",
]


@pytest.mark.torch
def test_core_does_not_import_rclpy_or_messages():
    code = ("import sys\n" + "".join(f"import {m}\n" for m in CORE_MODULES) +
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('rclpy', 'sensor_msgs', 'std_msgs', 'geometry_msgs', 'nav_msgs', 'launch', 'launch_ros'))\n"
            "print(bad); assert not bad, bad\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_runtime_core_does_not_need_torch():
    """Preprocessing, maps and localization logic import without torch (TensorRT robots)."""
    code = ("import sys, builtins\n"
            "real = builtins.__import__\n"
            "def guard(name, *a, **k):\n"
            "    if name.split('.')[0] == 'torch': raise ImportError('torch blocked for this test')\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = guard\n"
            "import vpr_ros.localization, vpr_ros.mapping.builder, vpr_ros.runtime.preprocess, "
            "vpr_ros.runtime.factory\n"
            "from vpr_ros.runtime.factory import open_backend\n"
            "from vpr_ros.config import ModelConfig\n"
            "from vpr_ros.errors import BackendUnavailable\n"
            "try:\n    open_backend('torch', ModelConfig(random_weights=True))\nexcept BackendUnavailable as e:\n    print('OK', e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and "OK" in r.stdout and "pip install torch" in r.stdout, r.stdout + r.stderr
