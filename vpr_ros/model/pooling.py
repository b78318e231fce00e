"""Pooling building blocks shared by the heads and aggregators."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class GeM(nn.Module):
    """Generalised-mean pooling over the spatial axes with a learnable exponent ``p``.

    ``forward(x[B,C,H,W]) -> [B,C]``: (mean(clamp(x, eps)^p))^(1/p), computed in float32:
    in float16, eps^p underflows to 0 and the gradient of 0^(1/p) is infinite (mixed-precision
    training would skip every step).
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.ones(1) * p)
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        p = self.p.float()
        return x.float().clamp(min=self.eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p).to(x.dtype)


def l2n(x: Tensor, dim: int = -1) -> Tensor:
    """L2-normalise along ``dim`` (safe for all-zero vectors)."""
    return F.normalize(x, p=2.0, dim=dim, eps=1e-12)
