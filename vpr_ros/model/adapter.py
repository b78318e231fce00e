"""Multi-convolution adapter inserted in every ViT block (CricaVPR / D2-VPR).

``forward(x[B, 1+P, C]) -> [B, 1+P, C]``: Linear C->C/2 + ReLU; the patch tokens,
reshaped to a square map, pass three conv branches (1x1; 1x1 then 3x3; 1x1 then 5x5;
every conv followed by BatchNorm(eps 1e-3) and ReLU) concatenated back to C/2 channels;
the class token passes through unchanged; the ReLU'd C/2 input is added to every token
(so the class token ends up doubled, as in the official code); Linear C/2->C, initialised
to zero so that a new adapter starts as the identity of its block.

Parameter names follow the released checkpoints (``D_fc1``, ``D_fc2``, ``branch1``,
``branch2.{0,1}``, ``branch3.{0,1}``, each with ``conv`` and ``bn``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class AdapterSpec:
    """Channel sizes: hidden = C/2, 1x1 branch = C/4, 3x3/5x5 reduce = C/32, out = C/8."""

    fc_in: int
    hidden: int
    ch1x1: int
    ch3x3_reduce: int
    ch3x3: int
    ch5x5_reduce: int
    ch5x5: int

    @classmethod
    def for_width(cls, c: int) -> "AdapterSpec":
        """(384 -> 192, 96, 12, 48, 12, 48) for ViT-S; (768 -> 384, 192, 24, 96, 24, 96) for ViT-B."""
        if c % 32:
            raise ValueError(f"adapter needs a width divisible by 32, got {c}")
        return cls(c, c // 2, c // 4, c // 32, c // 8, c // 32, c // 8)


class ConvBnRelu(nn.Module):
    """Conv2d (bias) -> BatchNorm2d(eps 1e-3) -> ReLU. ``fold()`` merges BN into the conv."""

    def __init__(self, cin: int, cout: int, k: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size=k, padding=k // 2, bias=True)
        self.bn: nn.Module = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))

    @torch.no_grad()
    def fold(self) -> None:
        """Fold the (eval-mode) BatchNorm into the conv weights; BN becomes Identity."""
        bn = self.bn
        if not isinstance(bn, nn.BatchNorm2d):
            return
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        self.conv.weight.mul_(scale.view(-1, 1, 1, 1))
        self.conv.bias.copy_((self.conv.bias - bn.running_mean) * scale + bn.bias)
        self.bn = nn.Identity()


class MultiConvAdapter(nn.Module):
    """See module docstring. Shapes: [B, 1+P, C] -> [B, 1+P, C] with P = grid * grid."""

    def __init__(self, spec: AdapterSpec, grid: int, prefix: int = 1) -> None:
        super().__init__()
        s = spec
        self.grid = grid  # patch map side, fixed by the input size (no shape-dependent code)
        self.prefix = prefix  # class token (+ registers): passed through like the class token
        self.D_fc1 = nn.Linear(s.fc_in, s.hidden)
        self.branch1 = ConvBnRelu(s.hidden, s.ch1x1, 1)
        self.branch2 = nn.Sequential(ConvBnRelu(s.hidden, s.ch3x3_reduce, 1), ConvBnRelu(s.ch3x3_reduce, s.ch3x3, 3))
        self.branch3 = nn.Sequential(ConvBnRelu(s.hidden, s.ch5x5_reduce, 1), ConvBnRelu(s.ch5x5_reduce, s.ch5x5, 5))
        self.D_fc2 = nn.Linear(s.hidden, s.fc_in)
        if s.ch1x1 + s.ch3x3 + s.ch5x5 != s.hidden:
            raise ValueError("adapter branches must add up to the hidden width")
        nn.init.zeros_(self.D_fc2.weight)
        nn.init.zeros_(self.D_fc2.bias)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.D_fc1(x))
        k = self.prefix
        fmap = h[:, k:].transpose(1, 2).unflatten(2, (self.grid, self.grid))
        out = torch.cat([self.branch1(fmap), self.branch2(fmap), self.branch3(fmap)], dim=1)
        out = torch.cat([h[:, :k], out.flatten(2).transpose(1, 2)], dim=1) + h
        return self.D_fc2(out)

    def fold_batchnorm(self) -> None:
        """Merge every BatchNorm into its conv (for export)."""
        for m in self.modules():
            if isinstance(m, ConvBnRelu):
                m.fold()
