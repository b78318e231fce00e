"""Transformer encoders over the 14 region tokens, written out explicitly (exportable).

Both follow ``nn.TransformerEncoderLayer(d, 16 heads, FFN, GELU, post-norm)`` exactly,
with the same parameter names (``self_attn.in_proj_weight``, ``self_attn.out_proj``,
``linear1``, ``linear2``, ``norm1``, ``norm2``) so released checkpoints load.

* :class:`CrossImageEncoder` (CricaVPR / D2-VPR teacher): the official code feeds
  [B, 14, D] to a ``batch_first=False`` layer, so attention runs **across the images of
  the batch** for each region. A descriptor then depends on its batch: teacher only.
* :class:`SelfEnhancedEncoder` (SciceVPR): every region token is its own sequence of
  length 1; attention over one token is exactly ``out_proj(v_proj(x))``. Descriptors
  depend on their own image only (usable on a robot).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _AttentionParams(nn.Module):
    """Parameters of ``nn.MultiheadAttention`` (packed q, k, v input projection)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d, d))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d))
        self.out_proj = nn.Linear(d, d)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)


class EncoderLayer(nn.Module):
    """Post-norm transformer layer (attention -> add & norm -> FFN(GELU) -> add & norm)."""

    def __init__(self, d: int, heads: int, ffn: int, dropout: float = 0.1) -> None:
        super().__init__()
        if d % heads:
            raise ValueError(f"encoder width {d} not divisible by {heads} heads")
        self.heads = heads
        self.self_attn = _AttentionParams(d)
        self.linear1 = nn.Linear(d, ffn)
        self.linear2 = nn.Linear(ffn, d)
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)
        self.dropout = nn.Dropout(dropout)

    def _ffn(self, x: Tensor) -> Tensor:
        y = self.linear2(self.dropout(F.gelu(self.linear1(x))))
        return self.norm2(x + self.dropout(y))

    def attend_across(self, x: Tensor) -> Tensor:
        """Full self-attention along dim 0: x [S, N, D] (sequence S, batch N) -> [S, N, D]."""
        s, n, d = x.shape
        qkv = F.linear(x, self.self_attn.in_proj_weight, self.self_attn.in_proj_bias)
        q, k, v = (t.reshape(s, n * self.heads, d // self.heads).transpose(0, 1) for t in qkv.chunk(3, dim=-1))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout.p if self.training else 0.0)
        out = self.self_attn.out_proj(out.transpose(0, 1).reshape(s, n, d))
        return self._ffn(self.norm1(x + self.dropout(out)))

    def attend_self(self, x: Tensor) -> Tensor:
        """Each token its own length-1 sequence: x [..., D] -> [..., D]."""
        d = x.shape[-1]
        w, b = self.self_attn.in_proj_weight[2 * d:], self.self_attn.in_proj_bias[2 * d:]
        out = self.self_attn.out_proj(F.linear(x, w, b))
        return self._ffn(self.norm1(x + self.dropout(out)))


class _Encoder(nn.Module):
    def __init__(self, d: int, layers: int, heads: int = 16, ffn: int = 2048) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(d, heads, ffn) for _ in range(layers))


class CrossImageEncoder(_Encoder):
    """tokens [B, 14, D] -> [B, 14, D], attention across the B images (teacher only)."""

    batch_independent = False

    def forward(self, tokens: Tensor) -> Tensor:
        for layer in self.layers:
            tokens = layer.attend_across(tokens)
        return tokens


class SelfEnhancedEncoder(_Encoder):
    """tokens [B, 14, D] -> [B, 14, D], each region token encoded on its own."""

    batch_independent = True

    def forward(self, tokens: Tensor) -> Tensor:
        for layer in self.layers:
            tokens = layer.attend_self(tokens)
        return tokens
