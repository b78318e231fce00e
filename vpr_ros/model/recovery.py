"""Distillation recovery module (D2-VPR): multi-depth token fusion after the backbone.

``forward(streams)`` takes the raw (pre-final-norm) token streams of every block and
returns [B, 1+P, D]: the streams after blocks 2, 4, 8 and 12 (1-indexed) concatenated
(4C), projected Linear 4C -> D (= 2C) and LayerNorm(D). Token 0 is the class token.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

#: 1-indexed blocks whose outputs are fused (as in the paper and official code).
RECOVERY_BLOCKS = (2, 4, 8, 12)


class DistillationRecovery(nn.Module):
    """Linear(4C -> 2C) + LayerNorm(2C) over the concatenated block outputs."""

    def __init__(self, width: int, depth: int = 12) -> None:
        super().__init__()
        # (2, 4, 8, 12) of 12 blocks; the same fractions of a shallower test network
        self.blocks = tuple(max(1, round(depth * b / 12)) for b in RECOVERY_BLOCKS)
        self.proj = nn.Linear(len(self.blocks) * width, 2 * width)
        self.norm = nn.LayerNorm(2 * width)

    @property
    def out_dim(self) -> int:
        return self.proj.out_features

    def forward(self, streams: list[Tensor]) -> Tensor:
        picked = [streams[i - 1] for i in self.blocks]
        return self.norm(self.proj(torch.cat(picked, dim=-1)))
