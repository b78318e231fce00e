"""Data-parallel training under ``torchrun``: process group, rank sharding, global-batch gathering.

Every training command runs unchanged under ``torchrun --nproc_per_node N`` (and multi-node
torchrun): the environment variables it sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT)
start a process group (NCCL on CUDA, gloo on the CPU). The global batch of a step is the one
a single process would train on; rank r takes its r-th contiguous share (whole places).
Descriptors are gathered so that the miner and the multi-similarity loss see the global batch,
with gradients flowing back to the rank that computed each descriptor.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch

from vpr_ros.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job: ``rank`` of ``world`` processes, ``local_rank`` on its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0 writes checkpoints, logs and validates."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def from_environment() -> DistInfo:
    """Read torchrun's variables (absent: one process)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError as exc:
        raise ConfigError(f"torchrun environment: {exc}") from None
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"torchrun environment: RANK={rank} WORLD_SIZE={world} is not a valid rank")
    return DistInfo(rank, world, local)


#: How long a collective may wait: the other ranks wait at a barrier while rank 0 builds the
#: teacher or decoded-image cache (minutes to tens of minutes on GSV-Cities), longer than
#: the NCCL default of 10 minutes.
SETUP_TIMEOUT = datetime.timedelta(hours=2)


def start(info: DistInfo, device: torch.device) -> None:
    """Join the process group (NCCL on CUDA, gloo on the CPU); no-op for one process."""
    import torch.distributed as dist

    if not info.active or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=info.rank, world_size=info.world,
                            timeout=SETUP_TIMEOUT, **({"device_id": device} if device.type == "cuda" else {}))


def stop(info: DistInfo) -> None:
    import torch.distributed as dist

    if info.active and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    import torch.distributed as dist

    if info.active:
        dist.barrier()


def shard(global_size: int, unit: int, info: DistInfo) -> slice:
    """The slice of a global batch (``global_size`` items in groups of ``unit``, e.g. the K images
    of a place) that rank ``info.rank`` trains on; ConfigError unless the groups divide evenly."""
    groups = global_size // unit
    if global_size % unit or groups % info.world:
        raise ConfigError(f"a global batch of {groups} groups (places or images) does not split over "
                          f"{info.world} processes; make it a multiple of the number of processes")
    per = groups // info.world
    return slice(info.rank * per * unit, (info.rank + 1) * per * unit)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward returns this rank's share of the summed gradients."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        import torch.distributed as dist

        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        import torch.distributed as dist

        grad = grad.contiguous()
        dist.all_reduce(grad)  # every rank's loss depends on every rank's descriptors
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def gather(x: torch.Tensor, info: DistInfo, grad: bool = True) -> torch.Tensor:
    """[n, ...] on each rank -> [world * n, ...] in rank order (gradients flow back when ``grad``)."""
    if not info.active:
        return x
    if grad:
        out: torch.Tensor = _GatherWithGrad.apply(x)
        return out
    import torch.distributed as dist

    parts = [torch.empty_like(x) for _ in range(info.world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def mean_over_ranks(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Element-wise mean of a tensor over the ranks (for logging)."""
    if not info.active:
        return values
    import torch.distributed as dist

    out = values.clone()
    dist.all_reduce(out)
    return out / info.world


def broadcast_text(text: str, info: DistInfo, limit: int = 4096) -> str:
    """Rank 0's ``text`` on every rank (UTF-8 bytes in a tensor; no pickling)."""
    if not info.active:
        return text
    import torch.distributed as dist

    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    data = text.encode()[:limit]
    buf = torch.zeros(limit + 1, dtype=torch.uint8, device=device)
    if info.main:
        buf[0:len(data)] = torch.tensor(list(data), dtype=torch.uint8)
    dist.broadcast(buf, 0)
    raw = bytes(buf[:limit].cpu().tolist())
    return raw.rstrip(b"\0").decode()


class _SumWithGrad(torch.autograd.Function):
    """all_reduce(SUM) whose gradient is the all-reduced gradient (every rank's loss depends on the sum)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        import torch.distributed as dist

        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        import torch.distributed as dist

        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class CrossRankBatchNorm2d(torch.nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the global batch (every rank), on any backend
    (torch's SyncBatchNorm needs CUDA): per-channel sums are all-reduced with gradients, so a
    multi-process step normalises exactly as one process on the whole batch would."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        import torch.distributed as dist

        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        xf = x.float()
        c = xf.shape[1]
        count = torch.tensor([xf.numel() / c], device=xf.device, dtype=torch.float32)
        stats: torch.Tensor = _SumWithGrad.apply(torch.cat([xf.sum((0, 2, 3)), (xf * xf).sum((0, 2, 3)), count]))
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                self.running_mean.mul_(1 - m).add_(mean.detach() * m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1).clamp_min(1)) * m)
                if self.num_batches_tracked is not None:
                    self.num_batches_tracked.add_(1)
        y = (xf - mean.view(1, c, 1, 1)) * torch.rsqrt(var.view(1, c, 1, 1) + self.eps)
        if self.affine:
            y = y * self.weight.float().view(1, c, 1, 1) + self.bias.float().view(1, c, 1, 1)
        return y.to(x.dtype)


def sync_batchnorms(model: torch.nn.Module) -> int:
    """Make every BatchNorm2d of ``model`` a :class:`CrossRankBatchNorm2d` (same parameters and
    state-dict keys); returns how many were converted."""
    n = 0
    for m in model.modules():
        if type(m) is torch.nn.BatchNorm2d:
            m.__class__ = CrossRankBatchNorm2d
            n += 1
    return n
