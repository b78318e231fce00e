"""Print the lines of requirements.txt that the given Python cannot already import.

Used by ``SYSTEM_SITE=1 scripts/setup.sh`` on robots, where ROS 2 (apt), PyTorch and TensorRT
(JetPack) come with the system. Run it with the new virtual environment's Python (made with
``--system-site-packages``, still empty): what it imports comes from the system.
- A pinned requirement is skipped when its module imports from the system (whatever its
  version), and reported on stderr.
- numpy is kept below 2 when the system's compiled packages need it: every extension module on
  the system's paths that uses NumPy's C API (it holds ``_ARRAY_API``) and was built against numpy
  1 (it names ``numpy.core`` but not numpy 2's ``numpy._core``) is listed; then the ``# numpy1:``
  pins of requirements.txt replace the others and ``--constraints FILE`` receives ``numpy<2``
  for every pip call (a dependency cannot pull numpy 2 in either). A Jetson's OpenCV and
  cv_bridge are built against Ubuntu 22.04's numpy 1.21 and fail to import under numpy 2.
    python scripts/system_lacks.py requirements.txt --constraints constraints.txt > missing.txt
"""
from __future__ import annotations

import argparse
import importlib.util
import mmap
import os
import re
import stat
import sys
import sysconfig

#: distribution -> import name, where they differ
MODULES = {
    "pyyaml": "yaml", "opencv-python-headless": "cv2", "faiss-cpu": "faiss", "pytorch-metric-learning":
    "pytorch_metric_learning", "rosbags-image": "rosbags.image", "ros-rclpy": "rclpy", "ros-sensor-msgs":
    "sensor_msgs", "ros-std-msgs": "std_msgs", "ros-geometry-msgs": "geometry_msgs", "ros-nav-msgs": "nav_msgs",
    "ros-diagnostic-msgs": "diagnostic_msgs", "ros-visualization-msgs": "visualization_msgs",
    "ros-std-srvs": "std_srvs", "ros-rmw-fastrtps-cpp": "rmw_fastrtps_cpp", "ros-ament-index-python":
    "ament_index_python", "catkin-pkg": "catkin_pkg", "colcon-common-extensions": "colcon_core",
    "pytest-timeout": "pytest_timeout", "tensorrt-stubs": "tensorrt", "cuda-python": "cuda.bindings",
}
MAX_BINARY = 1 << 30  # bytes: larger files are not extension modules worth reading


#: always installed from the pins: the build of vpr_ros itself needs a setuptools with PEP 660
#: editable installs (64+), newer than Ubuntu 22.04's 59.6 or what a venv seeds
ALWAYS = {"setuptools"}


def present(module: str) -> bool:
    """Whether ``module`` imports from the system (not from this still-empty environment)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return False
    if spec is None:
        return False
    where = spec.origin if spec.origin not in (None, "namespace") else next(iter(spec.submodule_search_locations or []), "")
    return not os.path.realpath(where or "").startswith(os.path.realpath(sys.prefix) + os.sep)


def system_dirs() -> list[str]:
    """The import path's folders outside this environment and outside the standard library."""
    own = os.path.realpath(sys.prefix)
    std = {os.path.realpath(sysconfig.get_paths()[k]) for k in ("stdlib", "platstdlib")}
    out = []
    for entry in sys.path:
        real = os.path.realpath(entry or ".")
        if os.path.isdir(real) and not real.startswith(own + os.sep) and real not in std and real not in out:
            out.append(real)
    return out


def numpy1_binaries(dirs: list[str]) -> list[str]:
    """Extension modules under ``dirs`` built against numpy 1's C API (regular files only)."""
    found = []
    for top in dirs:
        for root, subdirs, files in os.walk(top):
            # numpy's own modules say nothing about what the others need; other environments and
            # hidden folders (.git, .venv) are not the system's
            subdirs[:] = [d for d in subdirs if d not in ("numpy", "tests", "__pycache__") and not d.startswith(".")
                          and not os.path.isfile(os.path.join(root, d, "pyvenv.cfg"))]
            for name in files:
                if not (name.endswith(".so") or ".so." in name):
                    continue
                path = os.path.join(root, name)
                try:
                    with open(path, "rb", opener=lambda p, f: os.open(p, f | os.O_NOFOLLOW | os.O_NONBLOCK)) as fh:
                        st = os.fstat(fh.fileno())
                        if not 0 < st.st_size <= MAX_BINARY or not stat.S_ISREG(st.st_mode):
                            continue
                        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
                            if data.find(b"_ARRAY_API") < 0 or data.find(b"numpy.core") < 0:
                                continue
                            if data.find(b"numpy._core") < 0:
                                found.append(path)
                except (OSError, ValueError):
                    continue
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="requirements the system lacks")
    ap.add_argument("requirements", nargs="?", default="requirements.txt")
    ap.add_argument("--constraints", default="", help="write pip constraints here (numpy<2 when needed)")
    a = ap.parse_args(argv)
    numpy1 = numpy1_binaries(system_dirs())
    for path in numpy1[:10]:
        print(f"[setup] {path} is built against numpy 1", file=sys.stderr)
    if numpy1:
        print(f"[setup] {len(numpy1)} system extension module(s) need numpy 1: numpy stays below 2 "
              "(the '# numpy1:' pins of requirements.txt are used)", file=sys.stderr)
    if a.constraints:
        with open(a.constraints, "w", encoding="utf-8") as out:
            out.write("numpy<2\n" if numpy1 else "")
    for line in open(a.requirements, encoding="utf-8"):
        m = re.match(r"\s*([A-Za-z0-9_.\-]+)==", line)
        if not m:
            continue
        alt = re.search(r"#\s*numpy1:\s*(\S+==\S+)", line)
        if numpy1 and alt:
            marker = line.split("#")[0].partition(";")[2].strip()
            line = alt.group(1) + (f"; {marker}" if marker else "")
        dist = re.sub(r"^ros-jazzy-", "ros-", m.group(1).lower())  # ros-jazzy-rclpy provides rclpy, like ros-rclpy
        module = MODULES.get(dist, dist.replace("-", "_"))
        if dist == "rmw-fastrtps-cpp" or dist == "ros-rmw-fastrtps-cpp":
            if present("rclpy"):  # a system ROS 2 brings its own middleware
                print(f"[setup] system has rclpy: skipping {line.strip()}", file=sys.stderr)
                continue
        if present(module) and dist not in ALWAYS and not (numpy1 and dist == "numpy"):
            print(f"[setup] system Python has '{module}': skipping {line.split('#')[0].strip()}", file=sys.stderr)
            continue
        print(line.rstrip("\n"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
