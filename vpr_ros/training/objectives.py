"""Training objectives: multi-similarity (pytorch-metric-learning) and distillation MSE.

Descriptors are L2-normalised, so the dot product is the cosine similarity; the loss uses the
dot product and the miner the cosine, as the D2-VPR/SciceVPR training code does.
"""
from __future__ import annotations

import torch
from torch import Tensor


class MultiSimilarity:
    """MS loss (alpha, beta, base) on pairs mined by the MS miner (epsilon)."""

    def __init__(self, alpha: float = 1.0, beta: float = 50.0, base: float = 0.0, epsilon: float = 0.1) -> None:
        from pytorch_metric_learning import losses, miners
        from pytorch_metric_learning.distances import CosineSimilarity, DotProductSimilarity

        self.loss = losses.MultiSimilarityLoss(alpha=alpha, beta=beta, base=base, distance=DotProductSimilarity())
        self.miner = miners.MultiSimilarityMiner(epsilon=epsilon, distance=CosineSimilarity())

    def __call__(self, descriptors: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """(loss, fraction of batch images that took part in a mined pair), both device tensors:
        nothing here waits for the device."""
        d = descriptors.float()
        mined = self.miner(d, labels)
        used = torch.zeros(len(labels), dtype=torch.bool, device=d.device)
        used[torch.cat([mined[0], mined[2]])] = True
        return self.loss(d, labels, mined), used.float().mean()


def distillation_mse(student: Tensor, teacher: Tensor, reduction: str = "sum") -> Tensor:
    """[B, D] x [B, D] -> []: squared error summed over descriptor dimensions and averaged over
    the batch ('sum', SciceVPR), or averaged over batch and dimensions ('mean', D2-VPR)."""
    if student.shape != teacher.shape:
        raise ValueError(f"student descriptors {tuple(student.shape)} and teacher descriptors "
                         f"{tuple(teacher.shape)} differ in shape")
    sq = (student.float() - teacher.float()).pow(2)
    return sq.mean() if reduction == "mean" else sq.sum() / student.shape[0]
