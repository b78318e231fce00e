#!/usr/bin/env bash
# For the day a GPU with TensorRT is at hand (never run here: no TensorRT in this workplace).
# Runs, in order, what the CPU stand-ins could only imitate, and stops at the first failure:
#   1. our pre-flight check and the real parser agree on the default export (TensorRT 10+);
#   2. fp32, fp16 and int8 engines build, pass the accuracy gate and are cached;
#   3. the GPU-marked tests (TensorRT through whichever CUDA binding is installed);
#   4. backend 'auto' on cuda picks TensorRT, and falls back to ONNX Runtime on the CPU when the
#      engine is refused (one WARN naming why).
# Usage: bash benchmarks/tensorrt_first_contact.sh [OUT_DIR]   (needs: tensorrt, cuda-python or pycuda)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${1:-trt_first_contact}"
mkdir -p "$out"
py=.venv/bin/python
"$py" -c 'import tensorrt as t; print("TensorRT", t.__version__)' | tee "$out/versions.txt"
trt_version="$("$py" -c 'import tensorrt as t; print(".".join(t.__version__.split(".")[:2]))')"

# 1. export (folds constants), our rules, then TensorRT's own parser on the same file
.venv/bin/vpr_ros_export --model-config models/d2vpr_student.yaml --output "$out/student.onnx"  # random weights unless given
.venv/bin/vpr_ros_check_graph "$out/student.onnx" --tensorrt "$trt_version" | tee "$out/check_graph.txt"
"$py" - "$out/student.onnx" <<'PY' | tee "$out/real_parser.txt"
import sys
import tensorrt as trt
from vpr_ros.runtime.tensorrt_backend import trt_logger
b = trt.Builder(trt_logger())
n = b.create_network(0)
p = trt.OnnxParser(n, trt_logger())
ok = p.parse(open(sys.argv[1], "rb").read())
print("real parser:", "accepted" if ok else "refused", [str(p.get_error(i).desc()) for i in range(p.num_errors)])
sys.exit(0 if ok else 1)
PY

# 2. engines of the three precisions, gated and cached (timings in the log)
.venv/bin/vpr_ros_quantize "$out/student.onnx" --output "$out/student_int8.onnx" --target tensorrt \
  --calib-images ../shared/data/corridor/ref
for precision in fp32 fp16; do
  .venv/bin/vpr_ros_build_engine "$out/student.onnx" --precision "$precision" --cache-dir "$out/cache" 2>&1 | tee "$out/build_$precision.txt"
done
.venv/bin/vpr_ros_build_engine "$out/student_int8.onnx" --precision int8 --cache-dir "$out/cache" 2>&1 | tee "$out/build_int8.txt"

# 3. the GPU-marked tests
"$py" -m pytest -m gpu -ra test/test_gpu.py 2>&1 | tee "$out/pytest_gpu.txt"

# 4. backend 'auto' on cuda: TensorRT first; a refused engine ends on ONNX Runtime on the CPU
"$py" - "$out" <<'PY' 2>&1 | tee "$out/auto.txt"
import sys
from vpr_ros.config import GpuOptions, ModelConfig
from vpr_ros.runtime.factory import open_backend
out = sys.argv[1]
cfg = ModelConfig(onnx=f"{out}/student.onnx")
with open_backend("auto", cfg, "cuda", cache_dir=f"{out}/cache", gpu=GpuOptions(engine_build="never")) as b:
    print("auto:", b.selection)
PY
echo "tensorrt_first_contact: all steps passed; results in $out/"
