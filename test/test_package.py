"""Package metadata and a real colcon build of the package into an install tree."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO


def test_package_xml_is_format3_with_the_runtime_dependencies():
    from catkin_pkg.package import parse_package

    pkg = parse_package(str(REPO / "package.xml"))
    assert pkg.package_format == 3 and pkg.name == "vpr_ros"
    assert pkg.licenses == ["Apache-2.0"]
    assert all("@" in m.email for m in pkg.maintainers)
    deps = {d.name for d in pkg.exec_depends}
    for need in ("rclpy", "sensor_msgs", "std_msgs", "geometry_msgs", "nav_msgs", "diagnostic_msgs",
                 "visualization_msgs", "std_srvs", "cv_bridge", "launch", "launch_ros", "python3-numpy"):
        assert need in deps, need
    assert pkg.get_build_type() == "ament_python"


@pytest.mark.parametrize("distro", ["keys", "humble_keys"])  # Jazzy / Ubuntu noble, Humble / Ubuntu jammy
def test_every_dependency_is_a_rosdep_key_of_jazzy_noble_and_humble_jammy(distro):
    """`rosdep install --from-paths src` must resolve every key (recorded from ros/rosdistro)."""
    import json

    from catkin_pkg.package import parse_package

    pkg = parse_package(str(REPO / "package.xml"))
    known = json.loads((REPO / "test" / "fixtures" / "rosdep_keys.json").read_text())[distro]
    deps = {d.name for group in (pkg.build_depends, pkg.buildtool_depends, pkg.exec_depends, pkg.test_depends)
            for d in group}
    assert sorted(d for d in deps if not known.get(d)) == []
    assert "ament_python" not in deps  # a build type, not a rosdep key


def test_one_version_everywhere():
    import re

    import vpr_ros
    from catkin_pkg.package import parse_package

    version = parse_package(str(REPO / "package.xml")).version
    assert version == vpr_ros.__version__
    assert re.search(r'version="([^"]+)"', (REPO / "setup.py").read_text()).group(1) == version
    assert f"(v{version.rsplit('.', 1)[0]})" in (REPO / "README.md").read_text()


def test_versions_are_pinned_in_requirements_txt():
    lines = [ln.split("#")[0].strip() for ln in (REPO / "requirements.txt").read_text().splitlines()]
    reqs = [ln for ln in lines if ln]
    assert reqs and all("==" in r for r in reqs), [r for r in reqs if "==" not in r]


@pytest.mark.slow
def test_colcon_build_produces_a_ros_install_tree(tmp_path):
    colcon = shutil.which("colcon") or str(Path(sys.executable).parent / "colcon")
    ws = tmp_path / "ws"
    (ws / "src").mkdir(parents=True)
    src = ws / "src" / "vpr_ros"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "install", "log", "demo_output", "__pycache__", "*.egg-info", ".pytest_cache"))
    r = subprocess.run([colcon, "build", "--base-paths", "src"], cwd=ws, capture_output=True, text=True,
                       env={**os.environ, "COLCON_HOME": str(tmp_path / "colcon_home")}, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    inst = ws / "install" / "vpr_ros"
    assert (inst / "share" / "ament_index" / "resource_index" / "packages" / "vpr_ros").is_file()
    share = inst / "share" / "vpr_ros"
    assert (share / "package.xml").is_file()
    assert {p.name for p in (share / "launch").iterdir()} == {"localize.launch.py", "build_map.launch.py"}
    assert {"localizer.yaml", "map_builder.yaml"} <= {p.name for p in (share / "config").iterdir()}
    assert (share / "models" / "README.md").is_file()
    for exe in ("localizer", "map_builder", "localizer_lifecycle", "map_builder_lifecycle", "vpr_ros_demo",
                "vpr_ros_launch", "vpr_ros_build_map", "vpr_ros_map_info", "vpr_ros_convert_weights"):
        path = inst / "lib" / "vpr_ros" / exe
        assert path.is_file() and os.access(path, os.X_OK), exe
    # the installed package finds its own config through the ament index
    site = next(inst.glob("lib/python3*/site-packages"))
    code = ("from vpr_ros.launch_graph import default_params_file; "
            "print(default_params_file('localizer.yaml'))")
    env = {**os.environ, "AMENT_PREFIX_PATH": str(inst), "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert out.stdout.strip() == str(share / "config" / "localizer.yaml"), out.stdout + out.stderr


def _system_lacks(tmp_path, binaries: dict[str, bytes], requirements: str) -> tuple[list[str], str, str]:
    """Run scripts/system_lacks.py with a Python whose import path has a stand-in system folder
    holding ``binaries``; returns (requirement lines printed, constraints written, stderr)."""
    import subprocess
    import sys

    system = tmp_path / "system"
    system.mkdir()
    for name, data in binaries.items():
        (system / name).write_bytes(data)
    reqs = tmp_path / "requirements.txt"
    reqs.write_text(requirements)
    constraints = tmp_path / "constraints.txt"
    script = Path(__file__).resolve().parent.parent / "scripts" / "system_lacks.py"
    env = {**os.environ, "PYTHONPATH": str(system)}
    # -S: no site-packages, so the only packages are the stand-in system's (none importable here)
    run = subprocess.run([sys.executable, "-S", str(script), str(reqs), "--constraints", str(constraints)],
                         capture_output=True, text=True, env=env, check=True)
    return run.stdout.splitlines(), constraints.read_text(), run.stderr


REQS = ('numpy==2.4.6; python_version >= "3.11"  # numpy1: numpy==1.26.4\n'
        'ml-dtypes==0.6.0  # numpy1: ml-dtypes==0.5.4\n'
        'nonexistent-package-xyz==1.0\n')


def test_set_up_keeps_numpy_1_when_a_system_binary_is_built_against_it(tmp_path):
    """A Jetson's OpenCV is built against numpy 1 (its binary names numpy.core, not numpy 2's
    numpy._core): the set-up must not let numpy 2 in, neither by a pin nor by a dependency."""
    numpy1_cv2 = b"\x7fELF...._ARRAY_API...numpy.core.multiarray failed to import..."
    lines, constraints, err = _system_lacks(tmp_path, {"cv2.abi3.so": numpy1_cv2}, REQS)
    assert constraints == "numpy<2\n" and "cv2.abi3.so is built against numpy 1" in err
    assert lines == ['numpy==1.26.4; python_version >= "3.11"', "ml-dtypes==0.5.4", "nonexistent-package-xyz==1.0"]


def test_set_up_keeps_its_pins_when_system_binaries_accept_numpy_2(tmp_path):
    numpy2_cv2 = b"\x7fELF..._ARRAY_API..numpy._core._multiarray_umath..numpy.core._multiarray_umath"
    not_numpy = b"\x7fELF...numpy.core but no C API table"
    lines, constraints, _ = _system_lacks(tmp_path, {"cv2.abi3.so": numpy2_cv2, "other.so": not_numpy}, REQS)
    assert constraints == "" and lines[0].startswith("numpy==2.4.6") and lines[1].startswith("ml-dtypes==0.6.0")
