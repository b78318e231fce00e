"""``vpr_ros_build_engine``: compile an exported ONNX model into a cached TensorRT engine ahead
of time (FP32, FP16, or INT8 from a Q/DQ graph of vpr_ros_quantize), gated against ONNX Runtime
on images before it is cached; the nodes then find it in the cache. Needs TensorRT and a GPU."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from vpr_ros.cli import EXPECTED_ERRORS, HelpWithDefaults, positive_int, report_error
from vpr_ros.errors import VprError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(formatter_class=HelpWithDefaults, prog="vpr_ros_build_engine", description=__doc__.split("\n\n")[0])
    ap.add_argument("onnx", help="ONNX file from vpr_ros_export (FP32) or vpr_ros_quantize (INT8)")
    ap.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp16",
                    help="engine precision (int8 needs a Q/DQ graph from vpr_ros_quantize)")
    ap.add_argument("--max-batch", type=int, default=8, help="optimisation profile: min 1, opt 1, max N")
    ap.add_argument("--workspace-mib", type=positive_int, default=2048,
                    help="TensorRT builder workspace (MiB of GPU memory)")
    ap.add_argument("--device", default="cuda", help="cuda or cuda:N")
    ap.add_argument("--gate-images", default="", help="folder of real images for the accuracy gate "
                    "(default: procedural street views)")
    ap.add_argument("--cache-dir", default="", help="engine cache (default: $VPR_ROS_CACHE or ~/.cache/vpr_ros)")
    ap.add_argument("--rebuild", action="store_true", help="ignore a cached engine")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
    try:
        # the inputs first: a wrong file or value is reported as such, even where TensorRT is missing
        if a.max_batch < 1:
            raise VprError(f"--max-batch must be at least 1, got {a.max_batch}")
        import onnx

        from vpr_ros.export.graph_io import read_identity

        if not Path(a.onnx).is_file():
            raise VprError(f"{a.onnx}: ONNX file not found")
        try:
            meta = {p.key: p.value for p in onnx.load(a.onnx, load_external_data=False).metadata_props}
        except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError and others
            raise VprError(f"{a.onnx}: not a readable ONNX file ({type(exc).__name__})") from None
        read_identity(meta, a.onnx)
        from vpr_ros.export.quantize import is_quantized

        if a.precision == "int8" and not is_quantized(a.onnx):
            raise VprError(f"--precision int8 needs a Q/DQ graph: run vpr_ros_quantize {a.onnx} --output "
                           "student_int8.onnx --calib-images FOLDER, then build that file")
        if a.gate_images and not Path(a.gate_images).is_dir():
            raise VprError(f"--gate-images {a.gate_images}: not a folder")
        from vpr_ros.runtime.tensorrt_backend import TensorRTBackend, require_tensorrt

        require_tensorrt()
        from vpr_ros.datasets import list_images

        gate = tuple(list_images(Path(a.gate_images))) if a.gate_images else ()
        with TensorRTBackend.from_onnx(a.onnx, a.cache_dir or None, a.precision, a.max_batch, a.workspace_mib,
                                       a.device, gate, a.rebuild) as b:
            print(f"vpr_ros_build_engine: {b.engine_path} (sidecar {b.engine_path.with_suffix('.json')})")
        return 0
    except EXPECTED_ERRORS as exc:
        return report_error("vpr_ros_build_engine", exc)


if __name__ == "__main__":
    raise SystemExit(main())
