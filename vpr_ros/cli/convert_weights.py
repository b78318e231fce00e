"""``vpr_ros_convert_weights``: read weights of any supported layout into a model and write them
in another layout (vpr_ros safetensors, or the file the official D2-VPR / CricaVPR / SciceVPR /
DINOv2 / Hugging Face code loads strictly)."""
from __future__ import annotations

import argparse
import sys

from vpr_ros.config import model_config_from
from vpr_ros.cli import EXPECTED_ERRORS, HelpWithDefaults, report_error
from vpr_ros.model.convert import LAYOUTS


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(formatter_class=HelpWithDefaults, prog="vpr_ros_convert_weights", description=__doc__.split("\n\n")[0],
                                 epilog="layouts: " + "; ".join(f"{k}: {v}" for k, v in LAYOUTS.items()))
    ap.add_argument("--model-config", default="", help="a models/*.yaml file describing the network")
    ap.add_argument("--params-file", default="", help="params YAML whose model.* section to use")
    ap.add_argument("--weights", default="", help="input weights (any supported layout)")
    ap.add_argument("--to", required=True, choices=sorted(LAYOUTS), help="layout to write")
    ap.add_argument("--output", required=True, help="file to write")
    a = ap.parse_args(argv)
    try:
        cfg = model_config_from(a.model_config, a.params_file, weights=a.weights)
        if not cfg.weights:
            print("vpr_ros_convert_weights: error: no input weights (--weights or model.weights)", file=sys.stderr)
            return 2
        from vpr_ros.model.factory import build_model
        from vpr_ros.model.weights_out import write_weights

        model, info = build_model(cfg)
        path = write_weights(model, a.to, a.output)
        print(f"vpr_ros_convert_weights: {cfg.weights} -> {path} ({a.to}: {LAYOUTS[a.to]}); model {info.model_id}")
        return 0
    except EXPECTED_ERRORS as exc:
        return report_error("vpr_ros_convert_weights", exc)


if __name__ == "__main__":
    raise SystemExit(main())
