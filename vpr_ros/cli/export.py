"""``vpr_ros_export``: export the model to ONNX (BatchNorm folded, PCA baked in, fixed input
size, dynamic batch, opset 18) and check it against PyTorch with ONNX Runtime."""
from __future__ import annotations

import argparse

from vpr_ros.config import model_config_from
from vpr_ros.cli import EXPECTED_ERRORS, report_error


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="vpr_ros_export", description=__doc__.split("\n\n")[0])
    ap.add_argument("--output", required=True, help="ONNX file to write")
    ap.add_argument("--model-config", default="", help="a models/*.yaml file")
    ap.add_argument("--params-file", default="", help="params YAML whose model.* section to use")
    ap.add_argument("--weights", default="")
    ap.add_argument("--pca", default="", help="PCA .npz to bake into the graph")
    a = ap.parse_args(argv)
    try:
        cfg = model_config_from(a.model_config, a.params_file, weights=a.weights, pca=a.pca)
        from vpr_ros.export.onnx import export_onnx

        info = export_onnx(cfg, a.output)
        print(f"vpr_ros_export: wrote {info.path} ({info.metadata['vpr_ros.model_id']}, "
              f"{info.metadata['vpr_ros.descriptor_dim']}-d); ONNX Runtime vs PyTorch max |diff| "
              f"{info.max_abs_diff:.2e}")
        return 0
    except EXPECTED_ERRORS as exc:
        return report_error("vpr_ros_export", exc)


if __name__ == "__main__":
    raise SystemExit(main())
