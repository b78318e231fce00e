"""``vpr_ros_model_report``: parameters per component and compute of every variant at 224x224,
beside the D2-VPR paper's numbers (differences over 3% are flagged and explained in
docs/MODEL_REPORT.md)."""
from __future__ import annotations

import argparse
import functools
import sys

from vpr_ros.cli import HelpWithDefaults
from vpr_ros.model.report import PAPER, VARIANTS, component_rows, compute


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(formatter_class=HelpWithDefaults, prog="vpr_ros_model_report", description=__doc__.splitlines()[0])
    ap.add_argument("--markdown", action="store_true", help="print Markdown tables")
    a = ap.parse_args(argv)
    out = functools.partial(print, flush=True)  # every line as soon as it is known (the FLOP counts take a while)
    sep = " | " if a.markdown else "  "
    out(("| " if a.markdown else "") + sep.join(["variant", "component", "params (M)", "paper (M)", "diff"])
          + (" |" if a.markdown else ""))
    if a.markdown:
        out("|---|---|---:|---:|---|")
    for name, cfg in VARIANTS.items():
        for r in component_rows(name, cfg):
            paper = f"{r.paper_m:.2f}" if r.paper_m else "-"
            diff = ""
            if r.paper_m:
                rel = (r.params_m - r.paper_m) / r.paper_m
                diff = f"{rel:+.1%}" + (" (>3%, see docs)" if abs(rel) > 0.03 else "")
            cells = [r.variant, r.component, f"{r.params_m:.2f}", paper, diff]
            out(("| " if a.markdown else "") + sep.join(cells) + (" |" if a.markdown else ""))
    out()
    out(("| " if a.markdown else "") + sep.join(["variant", "GMAC", "GFLOP", "paper 'GFLOPs'"]) + (" |" if a.markdown else ""))
    if a.markdown:
        out("|---|---:|---:|---:|")
    for i, (name, cfg) in enumerate(VARIANTS.items()):
        out(f"[vpr_ros_model_report] counting the operations of {name} at 224x224 ({i + 1}/{len(VARIANTS)}; "
              "a traced forward pass, several seconds each)", file=sys.stderr)
        gmac, gflop = compute(cfg)
        paper = {"d2vpr_official": f"{PAPER['gflops_without_encoder']:.2f}",
                 "d2vpr_official_encoder": f"{PAPER['gflops_with_encoder']:.2f}"}.get(name, "-")
        out(("| " if a.markdown else "") + sep.join([name, f"{gmac:.2f}", f"{gflop:.2f}", paper])
              + (" |" if a.markdown else ""))
        if cfg.arch == "d2vpr":
            gmac, gflop = compute(cfg, per_region=True)
            out(("| " if a.markdown else "") + sep.join([f"{name} (official per-region aggregator)",
                                                           f"{gmac:.2f}", f"{gflop:.2f}", paper])
                  + (" |" if a.markdown else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
