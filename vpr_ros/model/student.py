"""The place-recognition networks: D2-VPR student, SciceVPR student, and the two teachers
(CricaVPR for D2-VPR, Super-CricaVPR for SciceVPR).

Every model maps images [B, 3, S, S] to L2-normalised descriptors [B, 14 * D] (D = 2C for
the D2-VPR student, the teacher's width for CricaVPR, 768 for SciceVPR and Super-CricaVPR).
Students are batch-independent; the teachers' cross-image encoders are not (training and
evaluation only).
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor, nn

from vpr_ros.model.adapter import ConvBnRelu
from vpr_ros.model.aggregator import FusedDeformableAggregator
from vpr_ros.model.backbone import DinoV2, patch_grid
from vpr_ros.model.encoder import CrossImageEncoder, SelfEnhancedEncoder
from vpr_ros.model.pooling import GeM, l2n
from vpr_ros.model.recovery import DistillationRecovery

#: CricaVPR's exact region slices of a 16x16 map: quadrants, then the 3x3 grid (5/6/5 cells).
def region_slices(side: int) -> list[tuple[slice, slice]]:
    """Row/column slices of the 4 quadrants and 9 cells of a side x side map (16 -> [0:8],[8:16]
    and [0:5],[5:11],[11:16])."""
    h = side // 2
    a, b = round(side * 5 / 16), round(side * 11 / 16)
    halves = [slice(0, h), slice(h, side)]
    thirds = [slice(0, a), slice(a, b), slice(b, side)]
    return [(r, c) for r in halves for c in halves] + [(r, c) for r in thirds for c in thirds]


#: Width of the dense local features: the patch tokens projected by a fixed random orthonormal
#: matrix (seeded; cosine similarities are approximately preserved), so a keyframe stores
#: 256 x 128 float16 values instead of 256 x 768.
LOCAL_DIM = 128


def dense_projection(width: int, dim: int = LOCAL_DIM, seed: int = 0) -> Tensor:
    """A fixed [width, dim] matrix with orthonormal columns (dim <= width)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(width, dim, generator=g, dtype=torch.float64))
    return q.float()


class PlaceModel(nn.Module):
    """Common interface: ``arch``, ``descriptor_dim``, ``freeze_for(stage)``, ``fold_batchnorm()``,
    and for the students ``forward_local(x) -> (descriptors [B, D], dense local features
    [B, P, LOCAL_DIM])`` from the same forward pass."""

    arch: str
    descriptor_dim: int
    batch_independent = True
    backbone: DinoV2

    def forward_local(self, x: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError(f"{type(self).__name__} has no dense local features")

    def _local(self, tokens: Tensor) -> Tensor:
        """Patch tokens [B, P, C] -> projected, L2-normalised [B, P, LOCAL_DIM]."""
        proj: Tensor = self.local_projection  # type: ignore[assignment]
        return l2n(tokens.float() @ proj.float(), dim=-1)

    def freeze_for(self, stage: str) -> None:
        """Set ``requires_grad`` for a training stage ('distill', 'finetune', 'inference')."""
        raise NotImplementedError

    def fold_batchnorm(self) -> None:
        """Merge adapter BatchNorms into their convolutions (export); eval-mode only."""
        for m in self.modules():
            if isinstance(m, ConvBnRelu):
                m.fold()

    def frozen_batchnorms(self) -> Iterator[nn.Module]:
        """BatchNorm layers whose parameters are frozen (kept in eval mode while training)."""
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d) and not any(p.requires_grad for p in m.parameters()):
                yield m

    def train(self, mode: bool = True) -> "PlaceModel":
        super().train(mode)
        if mode:
            for bn in self.frozen_batchnorms():
                bn.eval()  # frozen blocks keep their running statistics
        return self


class D2VprStudent(PlaceModel):
    """DINOv2 with adapters -> distillation recovery -> deformable aggregator -> encoder -> L2.

    ``encoder``: 'self_enhanced' (per-image, default), 'none' (the released no-encoder model) or
    'cross_image' (the paper's 2-layer encoder attending across the images of a batch, as in
    the released distillation/fine-tuning files: batch-dependent, so evaluation only).
    The backbone has no final norm (``final_norm=False``), as in the official D2-VPR ViT-S.
    """

    arch = "d2vpr"

    def __init__(self, backbone: DinoV2, encoder: str = "self_enhanced", compat: bool = False,
                 gem_p: float = 3.0) -> None:
        super().__init__()
        if backbone.norm is not None:
            raise ValueError("the D2-VPR student's backbone has no final norm: build it with final_norm=False")
        c = backbone.spec.embed_dim
        self.backbone = backbone
        self.drm = DistillationRecovery(c, backbone.spec.depth)
        d = self.drm.out_dim
        self.aggregator = FusedDeformableAggregator(d, compat=compat, gem_p=gem_p)
        self.encoder_kind = encoder
        if encoder == "self_enhanced":
            self.encoder: nn.Module | None = SelfEnhancedEncoder(d, layers=1, heads=16, ffn=int(2048 * d / 768))
        elif encoder == "cross_image":
            self.encoder = CrossImageEncoder(d, layers=2, heads=16, ffn=int(2048 * d / 768))
            self.batch_independent = False
        elif encoder == "none":
            self.encoder = None
        else:
            raise ValueError(f"encoder '{encoder}' is not 'self_enhanced', 'cross_image' or 'none'")
        self.descriptor_dim = 14 * d
        # fixed (seeded), so not part of any checkpoint
        self.register_buffer("local_projection", dense_projection(d), persistent=False)

    def region_tokens(self, x: Tensor) -> Tensor:
        """Images -> the 14 region tokens before the encoder [B, 14, D]."""
        tokens = self.drm(self.backbone(x))
        prefix = self.backbone.num_prefix_tokens
        return self.aggregator(patch_grid(tokens, prefix, self.backbone.grid), tokens[:, 0])

    def forward(self, x: Tensor) -> Tensor:
        return self._describe(self.region_tokens(x))

    def _describe(self, t: Tensor) -> Tensor:
        if self.encoder is not None:
            t = self.encoder(t)
        return l2n(t.flatten(1))

    def forward_local(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(descriptors, dense local features): the recovery module's patch tokens, projected."""
        tokens = self.drm(self.backbone(x))
        prefix = self.backbone.num_prefix_tokens
        regions = self.aggregator(patch_grid(tokens, prefix, self.backbone.grid), tokens[:, 0])
        return self._describe(regions), self._local(tokens[:, prefix:])

    def freeze_for(self, stage: str) -> None:
        """'distill': everything trains. 'finetune': blocks 1-8 (with their adapters), the
        patch embedding and tokens are frozen; the rest trains. 'inference': all frozen."""
        if stage not in ("distill", "finetune", "inference"):
            raise ValueError(f"unknown stage '{stage}'")
        self.requires_grad_(stage != "inference")
        if stage == "finetune":
            bb = self.backbone
            frozen = [bb.patch_embed, *bb.blocks[: 3 * len(bb.blocks) // 4]]
            for m in frozen:
                m.requires_grad_(False)
            for p in (bb.cls_token, bb.pos_embed, bb.mask_token, bb.register_tokens):
                if p is not None:
                    p.requires_grad_(False)
        self.backbone.mask_token.requires_grad_(False)


class TokenMixer(nn.Module):
    """LayerNorm over channels, then an MLP across the P tokens (P -> P -> P, ReLU), residual.

    x [B, D, P] -> [B, D, P] (SciceVPR's token mixer)."""

    def __init__(self, d: int, tokens: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.mix = nn.Sequential(nn.Linear(tokens, tokens), nn.ReLU(), nn.Linear(tokens, tokens))
        for m in self.mix:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.mix(self.norm(x.transpose(1, 2)).transpose(1, 2))


class SciceVprStudent(PlaceModel):
    """Frozen DINOv2; patch tokens of the last 4 blocks (final LayerNorm each) concatenated ->
    Conv1x1 4C -> D, ReLU -> 2 token mixers -> GeM + L2 over 14 regions (whole map, 2x2, 3x3)
    -> self-enhanced encoder -> concat -> L2."""

    arch = "scicevpr"

    def __init__(self, backbone: DinoV2, d: int = 768, mixers: int = 2, gem_p: float = 3.0) -> None:
        super().__init__()
        c, side = backbone.spec.embed_dim, backbone.grid
        self.backbone = backbone
        self.conv = nn.Conv2d(4 * c, d, 1)
        self.tokenmix = nn.Sequential(*[TokenMixer(d, side * side) for _ in range(mixers)])
        self.gem = GeM(gem_p)
        self.encoder: nn.Module = self._make_encoder(d)
        self.slices = region_slices(side)
        self.descriptor_dim = 14 * d
        self.register_buffer("local_projection", dense_projection(d), persistent=False)

    @staticmethod
    def _make_encoder(d: int) -> nn.Module:
        return SelfEnhancedEncoder(d, layers=1, heads=16, ffn=int(2048 * d / 768))

    def forward(self, x: Tensor) -> Tensor:
        return self._forward(x)[0]

    def forward_local(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(descriptors, dense local features): the token-mixed feature map, projected."""
        desc, f = self._forward(x)
        return desc, self._local(f.flatten(2).transpose(1, 2))

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        streams = self.backbone(x)
        prefix = self.backbone.num_prefix_tokens
        maps = [patch_grid(self.backbone.apply_norm(s), prefix, self.backbone.grid) for s in streams[-4:]]
        f = torch.relu(self.conv(torch.cat(maps, dim=1)))
        side = self.backbone.grid
        f = self.tokenmix(f.flatten(2)).unflatten(2, (side, side))
        regions = [f] + [f[:, :, r, c] for r, c in self.slices]
        tokens = torch.stack([l2n(self.gem(r)) for r in regions], dim=1)
        return l2n(self.encoder(tokens).flatten(1)), f

    def freeze_for(self, stage: str) -> None:
        """The backbone is always frozen; everything after it trains (except at 'inference')."""
        if stage not in ("distill", "finetune", "inference"):
            raise ValueError(f"unknown stage '{stage}'")
        self.requires_grad_(stage != "inference")
        self.backbone.requires_grad_(False)


class SuperCricaVprTeacher(SciceVprStudent):
    """Super-CricaVPR, the teacher SciceVPR distils from (``super_cricavpr.py`` of the official
    code): the SciceVPR network (frozen DINOv2, last-4-block fusion, conv 1x1, token mixers,
    14-region GeM) with CricaVPR's 2-layer cross-image encoder instead of the per-image one.
    Batch-dependent. ``train_scicevpr.py`` starts the student from its backbone and conv."""

    arch = "super_cricavpr"
    batch_independent = False

    @staticmethod
    def _make_encoder(d: int) -> nn.Module:
        return CrossImageEncoder(d, layers=2, heads=16, ffn=int(2048 * d / 768))

    def forward_local(self, x: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError("the Super-CricaVPR teacher is batch-dependent: no per-image local features")


class CricaVprTeacher(PlaceModel):
    """CricaVPR: DINOv2 ViT-B/14 with adapters, final norm, class token + 13 exact region slices
    (per-location L2, shared GeM), cross-image encoder (2 layers), L2. Batch-dependent."""

    arch = "cricavpr"
    batch_independent = False

    def __init__(self, backbone: DinoV2, gem_p: float = 3.0) -> None:
        super().__init__()
        d = backbone.spec.embed_dim
        self.backbone = backbone
        self.gem = GeM(gem_p)
        self.encoder = CrossImageEncoder(d, layers=2, heads=16, ffn=int(2048 * d / 768))
        self.slices = region_slices(backbone.grid)
        self.descriptor_dim = 14 * d

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.backbone.apply_norm(self.backbone(x)[-1])
        f = l2n(patch_grid(tokens, self.backbone.num_prefix_tokens, self.backbone.grid), dim=1)
        regions = [self.gem(f[:, :, r, c]) for r, c in self.slices]
        t = torch.stack([tokens[:, 0], *regions], dim=1)
        return l2n(self.encoder(t).flatten(1))

    def freeze_for(self, stage: str) -> None:
        """The teacher is only ever used frozen (it provides targets)."""
        self.requires_grad_(False)
