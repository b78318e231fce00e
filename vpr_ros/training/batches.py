"""Turn a batch plan into tensors: read, resize, augment, normalise; one batch read ahead.

Augmentation randomness is seeded by (seed, step, position in batch), so a batch is the same
whether it is produced in an uninterrupted run or after ``--resume``.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Protocol, Sequence

import numpy as np
import torch

from vpr_ros.datasets import read_rgb
from vpr_ros.runtime.preprocess import preprocess, resize_square
from vpr_ros.training.augment import rand_augment


class BatchPlan(Protocol):
    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]: ...


class BatchLoader:
    """Images of ``paths`` -> float32 [B, 3, S, S] tensors, labels int64 [B], indices [B]."""

    def __init__(self, paths: Sequence[Path], input_size: int, seed: int, augment: bool = False,
                 ops: int = 3, magnitude: int = 9, threads: int = 4) -> None:
        self.paths, self.size, self.seed = list(paths), input_size, seed
        self.augment, self.ops, self.magnitude = augment, ops, magnitude
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="vpr_ros_loader")
        self.ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vpr_ros_prefetch")

    def image(self, index: int, step: int, slot: int) -> np.ndarray:
        """float32 [3, S, S] of image ``index`` as seen at ``step`` (position ``slot`` in its batch)."""
        img = resize_square(read_rgb(self.paths[index]), self.size)
        if self.augment:
            img = rand_augment(img, np.random.default_rng([self.seed, step, slot, 2]), self.ops, self.magnitude)
        return preprocess(img, self.size)

    def load(self, step: int, indices: np.ndarray) -> torch.Tensor:
        images = list(self.pool.map(lambda a: self.image(int(a[1]), step, a[0]), enumerate(indices)))
        return torch.from_numpy(np.stack(images))

    def iterate(self, plan: BatchPlan, start: int, stop: int
                ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, np.ndarray]]:
        """(step, images, labels, indices) for steps start..stop-1, reading the next batch while
        the caller trains on the current one."""
        def submit(step: int) -> tuple[np.ndarray, np.ndarray, Future]:
            idx, labels = plan.batch(step)
            return idx, labels, self.ahead.submit(self.load, step, idx)

        pending = submit(start) if start < stop else None
        for step in range(start, stop):
            assert pending is not None
            idx, labels, fut = pending
            pending = submit(step + 1) if step + 1 < stop else None
            yield step, fut.result(), torch.from_numpy(np.asarray(labels, np.int64)), idx

    def close(self) -> None:
        self.ahead.shutdown(wait=True, cancel_futures=True)
        self.pool.shutdown(wait=True, cancel_futures=True)
