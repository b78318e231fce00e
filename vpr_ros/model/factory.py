"""Build a place-recognition model from a ModelConfig, with weights and a stable id."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vpr_ros.config import ModelConfig
from vpr_ros.model.backbone import build_backbone
from vpr_ros.model.checkpoints import load_strict, read_state_dict, state_sha256
from vpr_ros.model.dinov2_gem import DinoV2GeM


@dataclass(frozen=True)
class ModelInfo:
    """What a map and a backend must agree on."""

    model_id: str          # '<arch>-<backbone>-<input>-<sha12>'
    weights_sha256: str    # sha256 of the loaded state dict (see state_sha256)
    weights_source: str    # file path, or 'random(seed=N)'
    descriptor_dim: int
    input_size: int


def build_model(cfg: ModelConfig) -> tuple[nn.Module, ModelInfo]:
    """Create the network of ``cfg`` in eval mode, load its weights, and describe it."""
    if not cfg.weights:
        torch.manual_seed(cfg.seed)
    backbone = build_backbone(cfg.backbone, cfg.input_size)
    model = DinoV2GeM(backbone, cfg.gem_p)
    source = f"random(seed={cfg.seed})"
    if cfg.weights:
        state = read_state_dict(cfg.weights)
        if "cls_token" in state:  # a bare DINOv2 backbone checkpoint (official layout)
            load_strict(model.backbone, state, cfg.weights)
        else:
            load_strict(model, state, cfg.weights)
        source = cfg.weights
    model.eval()
    sha = state_sha256(model)
    info = ModelInfo(
        model_id=f"{cfg.arch}-{cfg.backbone}-{cfg.input_size}-{sha[:12]}",
        weights_sha256=sha,
        weights_source=source,
        descriptor_dim=model.descriptor_dim,
        input_size=cfg.input_size,
    )
    return model, info
