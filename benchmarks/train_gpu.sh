#!/usr/bin/env bash
# Short real training runs of the full ViT-S student on a GPU machine, through the package's
# commands (vpr_ros_finetune, vpr_ros_distill) on a procedurally generated GSV-Cities tree.
# Usage: bash benchmarks/train_gpu.sh OUT_DIR [STEPS] [PLACES_PER_BATCH] [PLACES_PER_CITY] [WORKERS]
# Under several GPUs, prefix the training commands with torchrun: TORCHRUN="torchrun --nproc_per_node 2".
# Wheels the machine lacks can be put in .whl/ (installed with --no-deps into /tmp/site).
set -euo pipefail
OUT=${1:?output folder}; STEPS=${2:-400}; P=${3:-32}; PLACES=${4:-300}; WORKERS=${5:-12}
LAUNCH=(${TORCHRUN:-python})
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
PLACES=$PLACES python - <<'PY'
import os, torch, sys
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NO CUDA")
from vpr_ros.demo.synthetic import place_views, write_gsv_cities
import time
t = time.time()
for i, city in enumerate(["Synthville", "Procburg"]):
    write_gsv_cities("/tmp/gsv", place_views(int(os.environ["PLACES"]), 4, 224, seed=11 + i), city)
print(f"synthetic GSV-Cities: 2 x {os.environ['PLACES']} places x 4 views in {time.time() - t:.0f} s", flush=True)
PY
rm -rf /tmp/run_ft /tmp/run_d
COMMON=(--no-progress --set data.gsv_root=/tmp/gsv --set "data.cities=[]" --set data.val_holdout=$((PLACES / 3))
        --set data.loader_workers="$WORKERS" --set train.log_every=10 --set train.amp=auto)
time "${LAUNCH[@]}" -m vpr_ros.cli.finetune "${COMMON[@]}" --run-dir /tmp/run_ft \
  --set data.places_per_batch="$P" --set train.steps="$STEPS" --set train.val_every=$((STEPS / 4)) \
  --set train.checkpoint_every="$STEPS" --set optim.warmup_steps=$((STEPS / 10)) \
  --set "optim.milestones=[$((STEPS * 3 / 4))]" 2>&1 | grep -v faiss.loader | tee "$OUT/finetune.log"
cp /tmp/run_ft/metrics.csv "$OUT/finetune_metrics.csv"; cp /tmp/run_ft/metrics.png "$OUT/finetune_metrics.png"
time "${LAUNCH[@]}" -m vpr_ros.cli.distill "${COMMON[@]}" --run-dir /tmp/run_d --set train.teacher_cache=/tmp/tcache \
  --set data.places_per_batch=8 --set train.steps=$((STEPS / 2)) --set train.val_every=$((STEPS / 4)) \
  --set train.checkpoint_every="$STEPS" --set optim.lr=1e-4 2>&1 | grep -v faiss.loader | tee "$OUT/distill.log"
cp /tmp/run_d/metrics.csv "$OUT/distill_metrics.csv"
