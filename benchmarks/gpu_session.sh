#!/usr/bin/env bash
# One GPU session's checks, in one call (docs/GPU_RESULTS.md records what they printed):
# gpu-marked tests, the package's backends side by side, the training data path against the
# model's consumption, and short fine-tuning / distillation runs through the commands.
# Usage: bash benchmarks/gpu_session.sh OUT_DIR   (wheels the machine lacks: .whl/, see train_gpu.sh)
set -uo pipefail
OUT=${1:?output folder}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 VPR_ROS_CACHE=/tmp/vpr_cache
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
echo "== gpu tests"; timeout 240 python3 -m pytest -q -m gpu test/test_gpu.py -p no:cacheprovider 2>&1 | tail -15
echo "== backends"; timeout 240 python3 benchmarks/gpu_check.py --backends-only --out "$OUT" 2>&1 | tail -20
echo "== loader"; timeout 200 python3 benchmarks/loader_speed.py --workers 12 --threads 4 --steps 16 --places 192 \
  --places-per-batch 16 --model --baseline-rev "" 2>&1 | tail -6
echo "== training"; timeout 400 bash benchmarks/train_gpu.sh "$OUT" "${STEPS:-300}" 32 300 12 2>&1 \
  | grep -v "^\[INFO\]\|faiss" | tail -30
