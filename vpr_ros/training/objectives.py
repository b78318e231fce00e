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

    def __call__(self, descriptors: Tensor, labels: Tensor) -> tuple[Tensor, float]:
        """(loss, fraction of batch images that took part in a mined pair)."""
        d = descriptors.float()
        mined = self.miner(d, labels)
        used = torch.unique(torch.cat([mined[0], mined[2]])) if len(mined[0]) or len(mined[2]) else mined[0]
        return self.loss(d, labels, mined), float(len(used)) / max(1, len(labels))


def distillation_mse(student: Tensor, teacher: Tensor) -> Tensor:
    """Squared error summed over descriptor dimensions, averaged over the batch: [B, D] x [B, D] -> []."""
    if student.shape != teacher.shape:
        raise ValueError(f"student descriptors {tuple(student.shape)} and teacher descriptors "
                         f"{tuple(teacher.shape)} differ in shape")
    return (student.float() - teacher.float()).pow(2).sum() / student.shape[0]
