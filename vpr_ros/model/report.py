"""Parameter and compute accounting of the networks, beside the papers' numbers."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vpr_ros.config import ModelConfig
from vpr_ros.model.factory import create

#: D2-VPR paper (Table of model complexity, 224x224) and CricaVPR, in millions / G.
PAPER = {
    "backbone": 22.16, "adapters": 2.30, "drm": 1.17, "aggregator": 1.58, "encoder": 11.03,
    "student_without_encoder": 27.21, "student_with_encoder": 38.24, "cricavpr": 106.76,
    "gflops_without_encoder": 9.05, "gflops_with_encoder": 9.14,
}


@dataclass(frozen=True)
class Row:
    """One line of the report: a component's parameters (M) and compute."""

    variant: str
    component: str
    params_m: float
    paper_m: float | None = None


def count(module: nn.Module | None, skip: str | None = None) -> float:
    """Parameters in millions (optionally skipping names containing ``skip``)."""
    if module is None:
        return 0.0
    return sum(p.numel() for n, p in module.named_parameters() if not (skip and skip in n)) / 1e6


def component_rows(name: str, cfg: ModelConfig) -> list[Row]:
    """Per-component parameter counts of one variant."""
    m = create(cfg)
    rows: list[Row] = []
    if cfg.arch == "d2vpr":
        agg = m.aggregator
        rows += [Row(name, "backbone (DINOv2 ViT-S/14)", count(m.backbone, ".adapter."), PAPER["backbone"]),
                 Row(name, "adapters (12 blocks)", count(m.backbone) - count(m.backbone, ".adapter."), PAPER["adapters"]),
                 Row(name, "distillation recovery module", count(m.drm), PAPER["drm"]),
                 Row(name, "aggregator: generator + fusion + GeM", count(agg) - count(agg.position), PAPER["aggregator"]),
                 Row(name, "aggregator: deformation-aware position embedding", count(agg.position)),
                 Row(name, f"encoder ({cfg.encoder})", count(m.encoder),
                     PAPER["encoder"] if cfg.encoder == "cross_image" else None)]
    elif cfg.arch in ("scicevpr", "super_cricavpr"):
        enc = "self-enhanced encoder" if cfg.arch == "scicevpr" else "cross-image encoder (2 layers)"
        rows += [Row(name, "backbone (frozen)", count(m.backbone)),
                 Row(name, "conv 1x1 + token mixers + GeM", count(m.conv) + count(m.tokenmix) + count(m.gem)),
                 Row(name, enc, count(m.encoder))]
    else:
        rows += [Row(name, "backbone (DINOv2 ViT-B/14)", count(m.backbone, ".adapter.")),
                 Row(name, "adapters", count(m.backbone) - count(m.backbone, ".adapter.")),
                 Row(name, "cross-image encoder (2 layers)", count(m.encoder), PAPER["encoder"])]
    total_paper = {"d2vpr_official": PAPER["student_without_encoder"], "cricavpr_teacher": PAPER["cricavpr"],
                   "d2vpr_official_encoder": PAPER["student_with_encoder"]}.get(name)
    rows.append(Row(name, "TOTAL", count(m), total_paper))
    return rows


def compute(cfg: ModelConfig, batch: int = 1, per_region: bool = False) -> tuple[float, float]:
    """(GMAC, GFLOP) of one forward pass per image, counting matrix products and convolutions
    (torch's FlopCounterMode: 2 FLOPs per multiply-accumulate; element-wise work not counted).

    ``per_region``: run the D2-VPR aggregator in the official formulation (generator
    recomputed for each of the 13 ROIs) instead of the fused one."""
    from torch.utils.flop_counter import FlopCounterMode

    m = create(cfg).eval()
    if per_region:
        agg = m.aggregator
        agg.forward = agg.forward_per_region  # type: ignore[method-assign]
    x = torch.randn(batch, 3, cfg.input_size, cfg.input_size)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        m(x)
    flops = fc.get_total_flops() / batch
    return flops / 2e9, flops / 1e9


VARIANTS = {
    "d2vpr_official": ModelConfig(arch="d2vpr", encoder="none", compat=True),
    "d2vpr_official_encoder": ModelConfig(arch="d2vpr", encoder="cross_image", compat=True),
    "d2vpr_student": ModelConfig(arch="d2vpr"),
    "scicevpr_student": ModelConfig(arch="scicevpr"),
    "scicevpr_official": ModelConfig(arch="scicevpr", backbone="vitb14"),
    "cricavpr_teacher": ModelConfig(arch="cricavpr", backbone="vitb14"),
    "super_cricavpr_teacher": ModelConfig(arch="super_cricavpr", backbone="vitb14"),
}
