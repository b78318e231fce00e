"""DINOv2 Vision Transformer (ViT-S/14, ViT-B/14, optional registers).

Parameter names follow the official checkpoint files (``cls_token``, ``pos_embed``,
``mask_token``, ``register_tokens``, ``patch_embed.proj``, ``blocks.N.{norm1, attn.qkv,
attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}``, ``norm``) so that
``dinov2_vit{s,b}14[_reg4]_pretrain.pth`` load with ``strict=True``.

The position embedding is built for a 37x37 grid (518 px). For a fixed input size it is
interpolated once with the official rule of the checkpoint's family (see
:func:`interpolate_pos_embed`) and cached, so the exported graph has no shape-dependent branches.

The D2-VPR student's backbone has no final ``norm`` (the official D2-VPR ViT-S ends in its
recovery module instead): ``DinoV2(..., final_norm=False)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vpr_ros.model.adapter import AdapterSpec, MultiConvAdapter


@dataclass(frozen=True)
class VitSpec:
    """Shape of a DINOv2 ViT."""

    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    patch_size: int = 14
    pos_grid: int = 37  # position embedding grid of the pretrained checkpoints (518 / 14)
    num_registers: int = 0
    # Position-embedding resize rule of the official hub models: plain DINOv2 uses a scale
    # factor (grid + 0.1) / 37 without antialiasing; the _reg4 models use the output size
    # with antialiasing (interpolate_antialias=True, interpolate_offset=0.0).
    interp_antialias: bool = False
    interp_offset: float = 0.1


VIT_PRESETS: dict[str, VitSpec] = {
    "vits14": VitSpec(384, 12, 6),
    "vitb14": VitSpec(768, 12, 12),
    "vits14_reg4": VitSpec(384, 12, 6, num_registers=4, interp_antialias=True, interp_offset=0.0),
    "vitb14_reg4": VitSpec(768, 12, 12, num_registers=4, interp_antialias=True, interp_offset=0.0),
    # Tiny random-weight network for tests and quick demos; not a real DINOv2.
    "vit_test": VitSpec(64, 6, 2, pos_grid=8),
    # Its teacher-sized sibling: width 128 = 2 x 64, so a CricaVPR teacher on it matches the
    # descriptor size of D2-VPR/SciceVPR students on vit_test (training tests).
    "vit_test_wide": VitSpec(128, 4, 4, pos_grid=8),
}


def interpolate_pos_embed(pos: Tensor, grid: int, antialias: bool = False, offset: float = 0.1,
                          src_grid: int | None = None) -> Tensor:
    """Resize a square position embedding to a ``grid`` x ``grid`` patch map, as DINOv2 does.

    ``pos`` [1, 1 + M*M, C] (class-token entry first) -> [1, 1 + grid*grid, C], same dtype.
    Bicubic; with ``offset`` > 0 the call passes the scale factor (grid + offset) / M (which
    also sets the sampling positions), otherwise the output size; ``antialias`` as given.
    Returned unchanged when grid == M. ``src_grid`` (M) defaults to the square root of the patch
    count (pass it when tracing, where shapes are tensors).
    """
    m = src_grid if src_grid is not None else math.isqrt(int(pos.shape[1]) - 1)
    if src_grid is None and m * m != pos.shape[1] - 1:
        raise ValueError(f"position embedding of {pos.shape[1] - 1} patches is not a square grid")
    if grid == m:
        return pos
    p = pos.float()
    patch = p[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2)
    if offset:
        scale = (grid + offset) / m
        patch = F.interpolate(patch, scale_factor=(scale, scale), mode="bicubic", antialias=antialias)
    else:
        patch = F.interpolate(patch, size=(grid, grid), mode="bicubic", antialias=antialias)
    patch = patch.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)
    return torch.cat([p[:, :1], patch], dim=1).to(pos.dtype)


class PatchEmbed(nn.Module):
    """Non-overlapping 14x14 patches -> tokens: [B,3,H,W] -> [B,(H/14)(W/14),C]."""

    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection: [B,N,C] -> [B,N,C]."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    """Per-channel learnable scale (``gamma``), initialised to 1e-5 as in DINOv2."""

    def __init__(self, dim: int, init: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm transformer block with layer scale: x + ls1(attn(norm1 x));
    x + ls2(mlp(norm2 x) + 0.2 adapter(norm2 x)) when an adapter is present."""

    ADAPTER_SCALE = 0.2

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, adapter_grid: int = 0,
                 prefix: int = 1) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim)
        self.adapter = MultiConvAdapter(AdapterSpec.for_width(dim), adapter_grid, prefix) if adapter_grid else None

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        h = self.norm2(x)
        if self.adapter is None:
            return x + self.ls2(self.mlp(h))
        return x + self.ls2(self.mlp(h) + self.ADAPTER_SCALE * self.adapter(h))


class DinoV2(nn.Module):
    """DINOv2 ViT returning all token streams.

    ``forward(x[B,3,S,S])`` returns the list of raw (pre-final-norm) token tensors after
    each block, each [B, 1 + R + P, C] (class token, R registers, P = (S/14)^2 patches).
    """

    def __init__(self, spec: VitSpec, input_size: int, adapters: bool = False, final_norm: bool = True) -> None:
        super().__init__()
        if input_size % spec.patch_size:
            raise ValueError(f"input_size {input_size} is not a multiple of {spec.patch_size}")
        self.spec = spec
        self.input_size = input_size
        self.grid = input_size // spec.patch_size
        c = spec.embed_dim
        self.patch_embed = PatchEmbed(spec.patch_size, c)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + spec.pos_grid**2, c))
        self.mask_token = nn.Parameter(torch.zeros(1, c))  # unused at inference; kept for strict loading
        self.register_tokens = (nn.Parameter(torch.zeros(1, spec.num_registers, c))
                                if spec.num_registers else None)
        self.blocks = nn.ModuleList(Block(c, spec.num_heads, spec.mlp_ratio, self.grid if adapters else 0,
                                          1 + spec.num_registers) for _ in range(spec.depth))
        self.norm: nn.LayerNorm | None = nn.LayerNorm(c, eps=1e-6) if final_norm else None
        self.fixed_pos_embed: Tensor | None
        self.register_buffer("fixed_pos_embed", None, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random initialisation as in DINOv2 (truncated normal 0.02, tiny cls/registers)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        for blk in self.blocks:  # adapters start as identity (zero output projection)
            if blk.adapter is not None:
                nn.init.zeros_(blk.adapter.D_fc2.weight)
                nn.init.zeros_(blk.adapter.D_fc2.bias)

    def apply_norm(self, t: Tensor) -> Tensor:
        """The final LayerNorm on a token tensor [B, N, C] (backbones with ``final_norm``)."""
        if self.norm is None:
            raise RuntimeError("this backbone was built without its final norm")
        return self.norm(t)

    @property
    def num_prefix_tokens(self) -> int:
        """Class token plus registers."""
        return 1 + self.spec.num_registers

    def interpolated_pos_embed(self) -> Tensor:
        """Position embedding for the fixed input grid: [1, 1 + grid^2, C].

        The official DINOv2 rule of this backbone family (:func:`interpolate_pos_embed`).
        After :meth:`fix_pos_embed` (inference, export) the precomputed buffer is used, so
        exported graphs carry it as a constant; otherwise it is computed (differentiably).
        """
        if self.fixed_pos_embed is not None:
            return self.fixed_pos_embed
        return self._interpolate_pos_embed()

    def _interpolate_pos_embed(self) -> Tensor:
        s = self.spec
        return interpolate_pos_embed(self.pos_embed, self.grid, s.interp_antialias, s.interp_offset, s.pos_grid)

    @torch.no_grad()
    def fix_pos_embed(self, fixed: bool = True) -> None:
        """Precompute the interpolated position embedding into a (non-persistent) buffer, or
        drop it (``fixed=False``, for training). Call again after loading new weights."""
        self.fixed_pos_embed = self._interpolate_pos_embed().detach().clone() if fixed else None

    def tokens(self, x: Tensor) -> Tensor:
        """Embedded input tokens before the first block: [B, 1 + R + P, C]."""
        b = x.shape[0]
        t = self.patch_embed(x)
        t = torch.cat([self.cls_token.expand(b, -1, -1), t], dim=1) + self.interpolated_pos_embed()
        if self.register_tokens is not None:
            t = torch.cat([t[:, :1], self.register_tokens.expand(b, -1, -1), t[:, 1:]], dim=1)
        return t

    def forward(self, x: Tensor) -> list[Tensor]:
        t = self.tokens(x)
        outs = []
        for blk in self.blocks:
            t = blk(t)
            outs.append(t)
        return outs


def build_backbone(name: str, input_size: int, adapters: bool = False, final_norm: bool = True) -> DinoV2:
    """A randomly initialised DINOv2 backbone from a preset name (see VIT_PRESETS)."""
    try:
        spec = VIT_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown backbone '{name}'; known: {', '.join(VIT_PRESETS)}") from None
    return DinoV2(spec, input_size, adapters, final_norm)


def patch_grid(x: Tensor, num_prefix: int, side: int) -> Tensor:
    """Patch tokens [B, prefix + side^2, C] -> feature map [B, C, side, side]."""
    return x[:, num_prefix:].transpose(1, 2).unflatten(2, (side, side))
