#!/usr/bin/env bash
# The robot's part of the test suite on the robot's Python as it is (a Jetson with JetPack 6 /
# Ubuntu 22.04 runs Python 3.10, ROS 2 Humble from apt, an OpenCV built against numpy 1, and an
# exported graph): .venv310 is made the way SYSTEM_SITE=1 makes it on the robot
# (--system-site-packages), over a stand-in system site, .jetson-system/, holding Ubuntu 22.04's
# numpy and an OpenCV wheel built against numpy 1 (the '# jetson-system:' lines of
# requirements.txt), on the import path after the venv's own packages as /usr/lib/python3/
# dist-packages is on the robot. scripts/setup.sh then installs what that system lacks (the cp310
# pins; numpy kept below 2, detected from the system's OpenCV) and every test not marked 'torch'
# runs (nodes, maps, verification, ONNX Runtime, the TensorRT stand-ins).
# The ONNX graphs the tests run come from the Python 3.11 environment (.venv, made by
# scripts/setup.sh), exported into $VPR_ROS_CACHE unless it already holds them (CI shares the
# main run's cache). PYTHON310=... names the interpreter. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
py310=""
for cand in "${PYTHON310:-}" python3.10 /usr/bin/python3.10 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.10*/bin/python3.10; do
  # a pyenv shim exists but fails when 3.10 is not the selected version: try to run each candidate
  if [ -n "$cand" ] && "$cand" -c 'import sys; assert sys.version_info[:2] == (3, 10)' >/dev/null 2>&1; then
    py310="$cand"; break
  fi
done
[ -n "$py310" ] || { echo "test_py310: no Python 3.10 found (set PYTHON310=...)" >&2; exit 1; }
sys_site="$PWD/.jetson-system"
sys_pins="$(sed -n 's/^# jetson-system: *//p' requirements.txt)"
sys_stamp="$(echo "$sys_pins" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$sys_site/.stamp" 2>/dev/null || true)" != "$sys_stamp" ]; then
  echo "[test_py310] stand-in system site: $(echo $sys_pins)"
  rm -rf "$sys_site" .venv310
  # shellcheck disable=SC2086
  "$py310" -m pip install --disable-pip-version-check -q --no-deps --only-binary=:all: --target "$sys_site" $sys_pins
  echo "$sys_stamp" > "$sys_site/.stamp"
fi
if [ -d .venv310 ] && ! grep -q '^include-system-site-packages = true' .venv310/pyvenv.cfg 2>/dev/null; then
  rm -rf .venv310  # made by an older version of this script, without the system's packages
fi
if [ ! -x .venv310/bin/python ]; then
  "$py310" -m venv --system-site-packages .venv310
fi
purelib="$(.venv310/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$sys_site" > "$purelib/00-jetson-system.pth"
VENV=.venv310 PYTHON="$py310" SYSTEM_SITE=1 bash scripts/setup.sh
.venv310/bin/python - "$sys_site" <<'PY'
# the robot's OpenCV still imports, from the system site, under the numpy the set-up left
import sys
import cv2
import numpy
assert cv2.__file__.startswith(sys.argv[1]), f"cv2 from {cv2.__file__}, not the system's"
assert int(numpy.__version__.split(".")[0]) < 2, f"numpy {numpy.__version__} would break the system's OpenCV"
print(f"[test_py310] system OpenCV {cv2.__version__} under numpy {numpy.__version__}")
PY
if [ -z "${VPR_ROS_CACHE:-}" ]; then
  export VPR_ROS_CACHE="$PWD/.venv310/exports"
fi
bash scripts/setup.sh >/dev/null
.venv/bin/python - <<'PY'
# the graphs of the two models the torch-free tests run (exported once, cached by configuration)
import sys
sys.path.insert(0, "test")
from conftest import TINY_MODEL
from vpr_ros.config import ModelConfig
from vpr_ros.runtime.factory import onnx_for

for cfg in (ModelConfig(**TINY_MODEL), ModelConfig(backbone="vit_test")):
    print(f"[test_py310] graph of {cfg.backbone} at {cfg.input_size} px: {onnx_for(cfg)}")
PY
exec .venv310/bin/python -m pytest -ra -n "${VPR_ROS_TEST_WORKERS:-2}" --dist loadfile "$@"
