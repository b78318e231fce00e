"""TEMPORARY place-recognition model: DINOv2 backbone + GeM over patch tokens.

This stands in for the D2-VPR student until the network issue lands; it shares the
backbone (and so the official checkpoint layout) with the real student.
``forward(x[B,3,S,S]) -> [B, C]`` L2-normalised (C = 384 for ViT-S/14).
"""
from __future__ import annotations

from torch import Tensor, nn

from vpr_ros.model.backbone import DinoV2, patch_grid
from vpr_ros.model.pooling import GeM, l2n


class DinoV2GeM(nn.Module):
    """DINOv2 -> final LayerNorm -> per-location L2 -> GeM -> L2 (temporary model)."""

    def __init__(self, backbone: DinoV2, gem_p: float = 3.0) -> None:
        super().__init__()
        self.backbone = backbone
        self.pool = GeM(gem_p)

    @property
    def descriptor_dim(self) -> int:
        return self.backbone.spec.embed_dim

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.backbone.norm(self.backbone(x)[-1])
        fmap = l2n(patch_grid(tokens, self.backbone.num_prefix_tokens), dim=1)
        return l2n(self.pool(fmap))
