"""Print the lines of requirements.txt that the given Python cannot already import.

Used by ``SYSTEM_SITE=1 scripts/setup.sh`` on robots, where ROS 2 (apt), PyTorch and TensorRT
(JetPack) come with the system: a pinned requirement is skipped when its module imports from the
system Python (whatever its version), and reported on stderr.
    python3 scripts/system_lacks.py requirements.txt > missing.txt
"""
from __future__ import annotations

import importlib.util
import re
import sys

#: distribution -> import name, where they differ
MODULES = {
    "pyyaml": "yaml", "opencv-python-headless": "cv2", "faiss-cpu": "faiss", "pytorch-metric-learning":
    "pytorch_metric_learning", "rosbags-image": "rosbags.image", "ros-rclpy": "rclpy", "ros-sensor-msgs":
    "sensor_msgs", "ros-std-msgs": "std_msgs", "ros-geometry-msgs": "geometry_msgs", "ros-nav-msgs": "nav_msgs",
    "ros-diagnostic-msgs": "diagnostic_msgs", "ros-visualization-msgs": "visualization_msgs",
    "ros-std-srvs": "std_srvs", "ros-rmw-fastrtps-cpp": "rmw_fastrtps_cpp", "ros-ament-index-python":
    "ament_index_python", "catkin-pkg": "catkin_pkg", "colcon-common-extensions": "colcon_core",
    "pytest-timeout": "pytest_timeout", "tensorrt-stubs": "tensorrt",
}


def present(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def main(path: str) -> int:
    for line in open(path, encoding="utf-8"):
        m = re.match(r"\s*([A-Za-z0-9_.\-]+)==", line)
        if not m:
            continue
        dist = re.sub(r"^ros-jazzy-", "ros-", m.group(1).lower())  # ros-jazzy-rclpy provides rclpy, like ros-rclpy
        module = MODULES.get(dist, dist.replace("-", "_"))
        if dist == "rmw-fastrtps-cpp" or dist == "ros-rmw-fastrtps-cpp":
            if present("rclpy"):  # a system ROS 2 brings its own middleware
                print(f"[setup] system has rclpy: skipping {line.strip()}", file=sys.stderr)
                continue
        if present(module):
            print(f"[setup] system Python has '{module}': skipping {line.split('#')[0].strip()}", file=sys.stderr)
            continue
        print(line.rstrip("\n"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1] if len(sys.argv) > 1 else "requirements.txt"))
