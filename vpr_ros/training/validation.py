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


class ImageFiles(torch.utils.data.Dataset):
    """Item i = preprocessed float32 [3, S, S] of ``paths[i]`` (read in loader workers)."""

    def __init__(self, paths: Sequence[Path], input_size: int) -> None:
        self.paths, self.size = list(paths), input_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(preprocess_batch([read_rgb(self.paths[i])], self.size)[0])


def describe_paths(model: torch.nn.Module, paths: Sequence[Path], input_size: int, device: torch.device,
                   amp: torch.dtype | None = None, workers: int = 0, batch: int = 32) -> np.ndarray:
    """Descriptors float32 [N, D] of image files with the model in eval mode; ``workers``
    processes decode the images while the model runs."""
    was_training = model.training
    model.eval()
    out = []
    workers = min(workers, len(paths) // (2 * batch))  # a few batches are read faster than workers start
    kw = {"prefetch_factor": 2, "multiprocessing_context": "forkserver"} if workers else {}
    loader = torch.utils.data.DataLoader(ImageFiles(paths, input_size), batch_size=batch, shuffle=False,
                                         num_workers=workers,
                                         pin_memory=device.type == "cuda", generator=torch.Generator(), **kw)
    with torch.inference_mode():
        for x in loader:
            with autocast_for(device, amp):
                out.append(model(x.to(device, non_blocking=True)).float())
    model.train(was_training)
    return torch.cat(out).cpu().numpy()


def place_recall(model: torch.nn.Module, dataset: EvalDataset, input_size: int, device: torch.device,
                 amp: torch.dtype | None = None, workers: int = 0) -> dict[str, float]:
    """recall@1/5/10 on a validation set (database and queries described by ``model``)."""
    db = describe_paths(model, dataset.database, input_size, device, amp, workers)
    q = describe_paths(model, dataset.queries, input_size, device, amp, workers)
    result = evaluate_descriptors(db, q, dataset.positives)
    return {f"recall@{n}": float(result.recalls[n]) for n in (1, 5, 10) if n in result.recalls}


def distill_error(model: torch.nn.Module, paths: Sequence[Path], targets: np.ndarray, input_size: int,
                  device: torch.device, amp: torch.dtype | None = None, workers: int = 0) -> dict[str, float]:
    """Student-teacher error on held-out images: mean squared error summed over dims, and mean cosine."""
    s = describe_paths(model, paths, input_size, device, amp, workers)
    t = targets.astype(np.float32)
    mse = float(((s - t) ** 2).sum(1).mean())
    cos = float((s * t).sum(1).mean() / max(1e-12, float(np.linalg.norm(t, axis=1).mean())))
    return {"val_distill_mse": mse, "val_teacher_cosine": cos}
