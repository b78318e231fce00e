"""Top-down deformable aggregator (TDDA, D2-VPR) -> 14 region tokens.

Regions, in CricaVPR's order: ``[global, 4 medium (2x2), 9 small (3x3)]``. The global token
is the recovered class token. Each of the 13 ROIs has a base sampling grid (medium: 8x8;
small: edges at 5/16 and 11/16, grids 5x5, 5x6, 5x5 / 6x5, 6x6, 6x5 / 5x5, 5x6, 5x5 as
rows x cols). A generator (concat(F, class token) -> Conv1x1 -> ReLU -> Conv1x1 -> 4)
predicts per location an offset (dx, dy) and a scale (sw, sh); it is sampled at the ROI's
base grid, the scale is ``0.5 + 1.5 sigmoid``, the offset clamped to +-0.25, the grid is
scaled about the ROI centre and shifted, clamped to the map, and F is sampled bilinearly.
Each region is pooled by per-location L2 + GeM. Down-top fusion enriches each medium token
with an MLP of the mean of its 4 adjacent small tokens, and the global token with an MLP of
the mean of the enhanced mediums. A deformation-aware position embedding (MLP of the
deformed grid's centre x, y, width, height) is added to every token.

``FusedDeformableAggregator.forward`` computes the generator once and samples all 13 grids
(512 points) with one ``grid_sample`` per tensor; ``forward_per_region`` is the official
formulation (generator recomputed per ROI, 13 separate samplings) kept as a reference for
tests and the benchmark. ``compat=True`` reproduces the official code's quirks exactly:
the generator output is sampled with [0, 1] coordinates where grid_sample expects [-1, 1],
the offset is scaled by the full ROI width/height (the paper says half), and only the
global token is output enhanced (the medium tokens in the output are the un-enhanced ones).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vpr_ros.model.pooling import GeM, l2n

_A, _B = 5 / 16, 11 / 16
#: (x1, y1, x2, y2) in [0, 1] map coordinates and (rows, cols) of the base grid.
MEDIUM_ROIS = [((0.0, 0.0, 0.5, 0.5), (8, 8)), ((0.5, 0.0, 1.0, 0.5), (8, 8)),
               ((0.0, 0.5, 0.5, 1.0), (8, 8)), ((0.5, 0.5, 1.0, 1.0), (8, 8))]
SMALL_ROIS = [((0.0, 0.0, _A, _A), (5, 5)), ((_A, 0.0, _B, _A), (5, 6)), ((_B, 0.0, 1.0, _A), (5, 5)),
              ((0.0, _A, _A, _B), (6, 5)), ((_A, _A, _B, _B), (6, 6)), ((_B, _A, 1.0, _B), (6, 5)),
              ((0.0, _B, _A, 1.0), (5, 5)), ((_A, _B, _B, 1.0), (5, 6)), ((_B, _B, 1.0, 1.0), (5, 5))]
ROIS = MEDIUM_ROIS + SMALL_ROIS
#: small regions adjacent to each medium region (row-major 3x3 / 2x2 indices).
MEDIUM_NEIGHBOURS = ((0, 1, 3, 4), (1, 2, 4, 5), (3, 4, 6, 7), (4, 5, 7, 8))
MAX_OFFSET = 0.25


def _batched(like: Tensor, x: Tensor) -> Tensor:
    """Broadcast ``x`` [...] to [B, ...] with B = like.shape[0], without baking B into a trace."""
    zeros = like.flatten(1)[:, :1].detach() * 0  # [B, 1]; data-dependent, so exporters keep B dynamic
    return x.unsqueeze(0) + zeros.reshape(-1, *([1] * x.dim()))


def base_grid(roi: tuple[float, float, float, float], size: tuple[int, int]) -> Tensor:
    """Base sampling points of one ROI: [rows*cols, 2] as (x, y), row-major."""
    x1, y1, x2, y2 = roi
    ys = torch.linspace(y1, y2, size[0], dtype=torch.float64)
    xs = torch.linspace(x1, x2, size[1], dtype=torch.float64)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1).reshape(-1, 2).float()


class DownTopFusion(nn.Module):
    """MLPs (Linear D->D/3, LayerNorm, GELU, Dropout 0.1, Linear D/3->D) small->medium->global."""

    def __init__(self, d: int) -> None:
        super().__init__()
        h = d // 3

        def mlp() -> nn.Sequential:
            return nn.Sequential(nn.Linear(d, h), nn.LayerNorm(h), nn.GELU(), nn.Dropout(0.1), nn.Linear(h, d))

        self.small_to_medium = mlp()
        self.medium_to_global = mlp()
        adj = torch.zeros(4, 9)
        for i, nb in enumerate(MEDIUM_NEIGHBOURS):
            adj[i, list(nb)] = 0.25
        self.register_buffer("adjacency", adj, persistent=False)

    def forward(self, glob: Tensor, medium: Tensor, small: Tensor) -> tuple[Tensor, Tensor]:
        """glob [B, D], medium [B, 4, D], small [B, 9, D] -> (enhanced global, enhanced mediums)."""
        enhanced = medium + self.small_to_medium(torch.einsum("ms,bsd->bmd", self.adjacency, small))
        return glob + self.medium_to_global(enhanced.mean(dim=1)), enhanced


class DeformablePositionEmbedding(nn.Module):
    """MLP (4 -> D/6 -> ReLU -> D) of (centre x, centre y, width, height), added to tokens."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(4, d // 6), nn.ReLU(), nn.Linear(d // 6, d))

    def forward(self, tokens: Tensor, boxes: Tensor) -> Tensor:
        return tokens + self.fc(boxes)


class FusedDeformableAggregator(nn.Module):
    """F [B, D, H, W] + class token [B, D] -> region tokens [B, 14, D] (before the encoder)."""

    def __init__(self, d: int, compat: bool = False, gem_p: float = 3.0) -> None:
        super().__init__()
        self.compat = compat
        self.generator = nn.Sequential(nn.Conv2d(2 * d, 2 * d // 3, 1), nn.ReLU(), nn.Conv2d(2 * d // 3, 4, 1))
        self.gem = GeM(gem_p)
        self.fusion = DownTopFusion(d)
        self.position = DeformablePositionEmbedding(d)
        grids = [base_grid(roi, size) for roi, size in ROIS]
        counts = [g.shape[0] for g in grids]
        base = torch.cat(grids)                                         # [512, 2]
        boxes = torch.tensor([[(r[0] + r[2]) / 2, (r[1] + r[3]) / 2, r[2] - r[0], r[3] - r[1]]
                              for r, _ in ROIS])
        member = torch.repeat_interleave(torch.arange(len(ROIS)), torch.tensor(counts))
        mask = member[None, :] == torch.arange(len(ROIS))[:, None]      # [13, 512]
        self.register_buffer("base", base, persistent=False)
        self.register_buffer("point_box", boxes[member], persistent=False)  # [512, 4]
        self.register_buffer("mask", mask, persistent=False)
        self.register_buffer("global_box", torch.tensor([[0.5, 0.5, 1.0, 1.0]]), persistent=False)
        # points are in [0, 1]: pushing non-members 1e4 away excludes them from a max / min
        self.register_buffer("outside", (~mask).float() * 1e4, persistent=False)
        self.register_buffer("average", mask.float() / mask.sum(1, keepdim=True), persistent=False)

    # ----------------------------------------------------------------- shared pieces
    def _generate(self, fmap: Tensor, cls: Tensor) -> Tensor:
        h, w = fmap.shape[2:]
        return self.generator(torch.cat([fmap, cls[:, :, None, None].expand(-1, -1, h, w)], dim=1))

    def _deform(self, gen: Tensor, base: Tensor, box: Tensor) -> Tensor:
        """Deformed points [B, N, 2] in [0, 1] for base points [N, 2] with their ROI boxes [N, 4]."""
        coords = base if self.compat else base * 2 - 1
        raw = F.grid_sample(gen, _batched(gen, coords[None]), mode="bilinear",
                            padding_mode="border", align_corners=True)[:, :, 0].transpose(1, 2)  # [B, N, 4]
        offset = raw[..., :2].clamp(-MAX_OFFSET, MAX_OFFSET)
        scale = 0.5 + 1.5 * torch.sigmoid(raw[..., 2:])
        centre, wh = box[:, :2], box[:, 2:]
        reach = wh if self.compat else wh / 2
        return (centre + (base - centre) * scale + offset * reach).clamp(0.0, 1.0)

    def _sample(self, fmap: Tensor, points: Tensor) -> Tensor:
        """F at points [B, N, 2] -> per-location L2-normalised features [B, D, N]."""
        grid = (points * 2 - 1)[:, None]
        feat = F.grid_sample(fmap, grid, mode="bilinear", padding_mode="border", align_corners=True)[:, :, 0]
        return l2n(feat, dim=1)

    def _finish(self, cls: Tensor, regions: Tensor, boxes: Tensor) -> Tensor:
        """cls [B, D], pooled regions [B, 13, D], deformed boxes [B, 13, 4] -> tokens [B, 14, D]."""
        medium, small = regions[:, :4], regions[:, 4:]
        glob, enhanced = self.fusion(cls, medium, small)
        out_medium = medium if self.compat else enhanced
        tokens = torch.cat([glob[:, None], out_medium, small], dim=1)
        global_box = _batched(cls, self.global_box.to(cls.dtype))
        return self.position(tokens, torch.cat([global_box, boxes], dim=1))

    # ----------------------------------------------------------------- forward passes
    def forward(self, fmap: Tensor, cls: Tensor) -> Tensor:
        """Fused: one generator pass, one grid_sample for the generator, one for F.

        Runs outside autocast in the dtype of its own parameters: under float16 autocast the
        gradient of the sampling grid (a sum over D channels) overflows and mixed-precision
        training skips every step; the aggregator is ~3% of the network's compute."""
        dtype = self.generator[0].weight.dtype
        with torch.autocast(device_type=fmap.device.type, enabled=False):
            return self._fused(fmap.to(dtype), cls.to(dtype))

    def _fused(self, fmap: Tensor, cls: Tensor) -> Tensor:
        gen = self._generate(fmap, cls)
        pts = self._deform(gen, self.base, self.point_box)               # [B, 512, 2]
        feat = self._sample(fmap, pts)                                  # [B, D, 512]
        p = self.gem.p.float()  # GeM in float32 (see GeM): eps^p underflows in float16
        pooled = torch.matmul(feat.float().clamp(min=self.gem.eps).pow(p), self.average.t().float()).pow(1.0 / p)
        pooled = pooled.to(feat.dtype)
        centre = torch.matmul(self.average, pts)                        # [B, 13, 2]
        away = self.outside[None, :, :, None]                           # [1, 13, 512, 1]
        hi = (pts[:, None] - away).amax(dim=2)                          # extent of each deformed grid
        lo = (pts[:, None] + away).amin(dim=2)
        return self._finish(cls, pooled.transpose(1, 2), torch.cat([centre, hi - lo], dim=-1))

    def forward_per_region(self, fmap: Tensor, cls: Tensor) -> Tensor:
        """Official formulation of the same mathematics (reference; slower)."""
        regions, boxes = [], []
        for r in range(len(ROIS)):
            sel = self.mask[r]
            gen = self._generate(fmap, cls)  # recomputed for every ROI, as in the official code
            pts = self._deform(gen, self.base[sel], self.point_box[sel])
            feat = self._sample(fmap, pts)
            regions.append(self.gem(feat[:, :, :, None]).flatten(1))
            boxes.append(torch.cat([pts.mean(1), pts.amax(1) - pts.amin(1)], dim=-1))
        return self._finish(cls, torch.stack(regions, 1), torch.stack(boxes, 1))
