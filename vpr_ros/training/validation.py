"""Validation during training with the package's evaluation code (never on a test set)."""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from vpr_ros.datasets import EvalDataset, read_rgb
from vpr_ros.eval_run import evaluate_descriptors
from vpr_ros.runtime.preprocess import preprocess_batch


def autocast_for(device: torch.device, dtype: torch.dtype | None):  # type: ignore[no-untyped-def]
    """Autocast context for ``dtype`` on ``device`` (a no-op context when dtype is None)."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def describe_paths(model: torch.nn.Module, paths: Sequence[Path], input_size: int, device: torch.device,
                   amp: torch.dtype | None = None, batch: int = 32) -> np.ndarray:
    """Descriptors float32 [N, D] of image files with the model in eval mode."""
    was_training = model.training
    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(paths), batch):
            x = torch.from_numpy(preprocess_batch([read_rgb(p) for p in paths[i:i + batch]], input_size))
            with autocast_for(device, amp):
                out.append(model(x.to(device)).float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(out)


def place_recall(model: torch.nn.Module, dataset: EvalDataset, input_size: int, device: torch.device,
                 amp: torch.dtype | None = None) -> dict[str, float]:
    """recall@1/5/10 on a validation set (database and queries described by ``model``)."""
    db = describe_paths(model, dataset.database, input_size, device, amp)
    q = describe_paths(model, dataset.queries, input_size, device, amp)
    result = evaluate_descriptors(db, q, dataset.positives)
    return {f"recall@{n}": float(result.recalls[n]) for n in (1, 5, 10) if n in result.recalls}


def distill_error(model: torch.nn.Module, paths: Sequence[Path], targets: np.ndarray, input_size: int,
                  device: torch.device, amp: torch.dtype | None = None) -> dict[str, float]:
    """Student-teacher error on held-out images: mean squared error summed over dims, and mean cosine."""
    s = describe_paths(model, paths, input_size, device, amp)
    t = targets.astype(np.float32)
    mse = float(((s - t) ** 2).sum(1).mean())
    cos = float((s * t).sum(1).mean() / max(1e-12, float(np.linalg.norm(t, axis=1).mean())))
    return {"val_distill_mse": mse, "val_teacher_cosine": cos}
