#!/usr/bin/env bash
# The robot's part of the test suite on Python 3.10 without torch (a Jetson with JetPack 6 /
# Ubuntu 22.04 runs Python 3.10 and an exported graph): .venv310 with the cp310 pins of
# requirements.txt, then every test not marked 'torch' (nodes, maps, verification, ONNX Runtime).
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
VENV=.venv310 PYTHON="$py310" bash scripts/setup.sh
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
