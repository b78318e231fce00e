"""``vpr_ros_build_engine``: compile an exported ONNX model into a cached TensorRT engine
(FP32 / FP16 / INT8 with an entropy calibrator on real images). Needs TensorRT and a GPU."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vpr_ros.errors import VprError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="vpr_ros_build_engine", description=__doc__.split("\n\n")[0])
    ap.add_argument("onnx", help="ONNX file from vpr_ros_export")
    ap.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp16")
    ap.add_argument("--max-batch", type=int, default=8, help="optimisation profile: min 1, opt 1, max N")
    ap.add_argument("--calib-images", default="", help="folder of real images for INT8 calibration")
    ap.add_argument("--cache-dir", default="", help="engine cache (default: $VPR_ROS_CACHE or ~/.cache/vpr_ros)")
    ap.add_argument("--rebuild", action="store_true", help="ignore a cached engine")
    a = ap.parse_args(argv)
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
        size = int(read_identity(meta, a.onnx)["input_size"])
        if a.precision == "int8" and a.calib_images and not Path(a.calib_images).is_dir():
            raise VprError(f"--calib-images {a.calib_images}: not a folder")
        from vpr_ros.runtime.tensorrt_backend import require_tensorrt

        require_tensorrt()
        from vpr_ros.datasets import list_images
        from vpr_ros.export.tensorrt import build_engine, calibration_batches
        from vpr_ros.runtime.factory import default_cache_dir

        calib = []
        if a.precision == "int8":
            if not a.calib_images:
                raise VprError("--precision int8 needs --calib-images FOLDER (real images of your robot's scenes)")
            calib = calibration_batches(list_images(Path(a.calib_images)), size)
        path = build_engine(Path(a.onnx), Path(a.cache_dir) if a.cache_dir else default_cache_dir(),
                            a.precision, a.max_batch, size, calib, rebuild=a.rebuild)
        print(f"vpr_ros_build_engine: {path} (sidecar {path.with_suffix('.json')})")
        return 0
    except (VprError, KeyError) as exc:
        print(f"vpr_ros_build_engine: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
