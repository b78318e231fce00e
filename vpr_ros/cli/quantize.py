"""``vpr_ros_quantize``: make an explicit INT8 (Q/DQ) ONNX graph from an FP32 export and
calibration images, check it against FP32 ONNX Runtime (the accuracy gate), and write it only
if it passes. ``--target tensorrt`` (symmetric, for TensorRT precision int8) or ``cpu`` (ONNX
Runtime's fast integer form). Set ``model.onnx`` to the result to run it."""
from __future__ import annotations

import argparse
from pathlib import Path

from vpr_ros.cli import EXPECTED_ERRORS, HelpWithDefaults, positive_int, report_error
from vpr_ros.errors import VprError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(formatter_class=HelpWithDefaults, prog="vpr_ros_quantize", description=__doc__.split("\n\n")[0])
    ap.add_argument("onnx", help="FP32 ONNX file from vpr_ros_export")
    ap.add_argument("--output", required=True, help="INT8 ONNX file to write")
    ap.add_argument("--calib-images", required=True,
                    help="folder of real images of your robot's scenes (200-1000 is plenty)")
    ap.add_argument("--gate-images", default="",
                    help="folder of other real images for the accuracy gate (default: every 5th calibration image, "
                         "kept out of calibration)")
    ap.add_argument("--target", choices=("tensorrt", "cpu"), default="tensorrt",
                    help="who runs the INT8 graph: tensorrt (symmetric INT8 Q/DQ, zero points 0, what its parser "
                         "accepts) or cpu (ONNX Runtime's UINT8 activations)")
    ap.add_argument("--method", choices=("percentile", "minmax", "entropy"), default="percentile",
                    help="calibration: activation ranges from the 99.999th percentile, the min/max, or entropy")
    ap.add_argument("--max-images", type=positive_int, default=512, help="calibration images used at most")
    a = ap.parse_args(argv)
    try:
        import onnx

        from vpr_ros.datasets import list_images
        from vpr_ros.export.accuracy_gate import compare, enforce, gate_images
        from vpr_ros.export.graph_io import read_identity
        from vpr_ros.export.quantize import is_quantized, quantize_int8
        from vpr_ros.runtime.onnxruntime_backend import OnnxRuntimeBackend
        from vpr_ros.runtime.preprocess import preprocess_batch

        src = Path(a.onnx)
        if not src.is_file():
            raise VprError(f"{src}: ONNX file not found")
        try:
            meta = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}
        except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError and others
            raise VprError(f"{src}: not a readable ONNX file ({type(exc).__name__})") from None
        size = int(read_identity(meta, str(src))["input_size"])
        if is_quantized(src):
            raise VprError(f"{src} is already quantized (Q/DQ nodes); give the FP32 export")
        for folder in filter(None, (a.calib_images, a.gate_images)):
            if not Path(folder).is_dir():
                raise VprError(f"{folder}: not a folder of images")
        paths = list_images(Path(a.calib_images))[:a.max_images]
        gate_paths = list_images(Path(a.gate_images)) if a.gate_images else paths[::5]
        calib_paths = paths if a.gate_images else [p for i, p in enumerate(paths) if i % 5]
        if len(calib_paths) < 8 or len(gate_paths) < 2:
            raise VprError(f"{a.calib_images}: {len(paths)} images; need at least 10 (calibration + gate)")
        from vpr_ros.datasets import read_rgb

        batches = [preprocess_batch([read_rgb(p) for p in calib_paths[i:i + 8]], size)
                   for i in range(0, len(calib_paths), 8)]
        out = Path(a.output)
        candidate = out.with_name(f".{out.name}.candidate.onnx")
        quantize_int8(src, candidate, batches, a.method, a.target)
        images, source = gate_images(gate_paths, size, count=len(gate_paths))
        try:
            with OnnxRuntimeBackend(src) as ref, OnnxRuntimeBackend(candidate) as q:
                result = enforce(compare(ref, q, images, "int8", source), f"INT8 graph of {src}")
        except VprError:
            candidate.unlink(missing_ok=True)
            raise
        candidate.replace(out)
        result.write(out.with_suffix(".gate.json"))
        print(f"vpr_ros_quantize: wrote {out} ({a.target}, {a.method}, {len(calib_paths)} calibration images); "
              f"gate passed: {result.summary()}")
        return 0
    except EXPECTED_ERRORS as exc:
        return report_error("vpr_ros_quantize", exc)


if __name__ == "__main__":
    raise SystemExit(main())
