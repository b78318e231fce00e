"""``vpr_ros_export``: export the model to ONNX (BatchNorm folded, PCA baked in, fixed input
size, dynamic batch, opset 18) and check it against PyTorch with ONNX Runtime."""
from __future__ import annotations

import argparse
import sys
import time

from vpr_ros.config import WEIGHT_FREE, model_config_from, weights_refusal
from vpr_ros.cli import EXPECTED_ERRORS, HelpWithDefaults, report_error
from vpr_ros.cli.model_args import RANDOM_WEIGHTS_WARNING, add_model_args, model_with_args


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(formatter_class=HelpWithDefaults, prog="vpr_ros_export", description=__doc__.split("\n\n")[0])
    ap.add_argument("--output", required=True, help="ONNX file to write")
    ap.add_argument("--params-file", default="", help="params YAML whose model.* section to use")
    ap.add_argument("--pca", default="", help="PCA .npz to bake into the graph")
    add_model_args(ap, backend=False)
    a = ap.parse_args(argv)
    try:
        cfg = model_with_args(model_config_from("", a.params_file, pca=a.pca), a)
        from vpr_ros.errors import ConfigError
        from vpr_ros.export.onnx import export_onnx

        if cfg.arch in WEIGHT_FREE:
            raise ConfigError(f"model.arch '{cfg.arch}' is weight-free (OpenCV SIFT + VLAD): there is no network "
                              "to export; the nodes run it as it is")
        refusal = weights_refusal(cfg)
        if refusal and not cfg.batch_dependent:  # a batch-dependent model: export_onnx says why not
            raise ConfigError(refusal)
        if not cfg.weights:
            print(f"vpr_ros_export: {RANDOM_WEIGHTS_WARNING}", file=sys.stderr, flush=True)
        start = time.monotonic()

        def step(text: str) -> None:
            print(f"vpr_ros_export: [{time.monotonic() - start:5.1f} s] {text}", flush=True)
        info = export_onnx(cfg, a.output, progress=step)
        print(f"vpr_ros_export: wrote {info.path} ({info.metadata['vpr_ros.model_id']}, "
              f"{info.metadata['vpr_ros.descriptor_dim']}-d); ONNX Runtime vs PyTorch max |diff| "
              f"{info.max_abs_diff:.2e}")
        return 0
    except EXPECTED_ERRORS as exc:
        return report_error("vpr_ros_export", exc)


if __name__ == "__main__":
    raise SystemExit(main())
