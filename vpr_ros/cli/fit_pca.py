"""``vpr_ros_fit_pca``: fit PCA on training-image descriptors and store it with the model.

Writes ``pca.npz`` beside the model YAML and names it in the YAML's ``pca`` key, so
``vpr_ros_export --model-config`` bakes it into the graph and the nodes apply it.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from vpr_ros.cli import EXPECTED_ERRORS, HelpWithDefaults, report_error
from vpr_ros.errors import VprError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(formatter_class=HelpWithDefaults, prog="vpr_ros_fit_pca", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-config", default="", help="the trained model's model.yaml (runs/*/best/model.yaml)")
    ap.add_argument("--config", default=None, help="YAML with model/data/pca sections (default: config/fit_pca.yaml)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override one setting, e.g. --set pca.dim=1024; repeatable")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar (e.g. in logs)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] [%(name)s] %(message)s")
    import os

    if os.environ.get("RANK", "0") not in ("", "0"):  # under torchrun: one process fits, the others leave
        print(f"[vpr_ros_fit_pca] rank {os.environ['RANK']}: rank 0 fits the PCA")
        return 0
    from vpr_ros.config import read_model_section, read_yaml
    from vpr_ros.launch_graph import default_params_file
    from vpr_ros.training.pca_fit import attach_to_model_yaml, fit_pca, training_images
    from vpr_ros.training.settings import PCA_SECTIONS, build_sections

    try:
        path = a.config or default_params_file("fit_pca.yaml")
        data = read_yaml(path)
        if a.model_config:
            data["model"] = read_model_section(a.model_config)
        s = build_sections(PCA_SECTIONS, data, str(path), a.overrides)
        model, cfg = s["model"], s["pca"]
        if not model.weights:
            print("[vpr_ros_fit_pca] WARNING: the model has no weights (random network)", file=sys.stderr)
        paths = training_images(s["data"])
        print(f"[vpr_ros_fit_pca] {len(paths)} training images; fitting {cfg.dim} components on at most "
              f"{cfg.max_images}", flush=True)
        pca = fit_pca(model, paths, cfg, progress=not a.no_progress)
        if cfg.output:
            out = Path(cfg.output)
        elif a.model_config:
            out = Path(a.model_config).parent / "pca.npz"
        else:
            raise VprError("set pca.output, or give --model-config to store pca.npz beside the model")
        pca.save(out)
        kept = float(pca.explained.sum())
        print(f"[vpr_ros_fit_pca] wrote {out} ({pca.pca_id}: {pca.mean.shape[0]} -> {pca.out_dim} dims, "
              f"{kept:.1%} of the variance)")
        if a.model_config and not cfg.output:
            attach_to_model_yaml(Path(a.model_config), out)
            print(f"[vpr_ros_fit_pca] {a.model_config} now applies it (model.pca)")
        return 0
    except EXPECTED_ERRORS as exc:
        return report_error("vpr_ros_fit_pca", exc)


if __name__ == "__main__":
    raise SystemExit(main())
