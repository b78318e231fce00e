"""Turn a batch plan into tensors: read, resize, augment, normalise.

Augmentation randomness is seeded by (seed, step, position in the global batch), so a batch
is the same in an uninterrupted run, after ``--resume``, and whatever the number of processes.

Training reads through :func:`step_loader` (a ``DataLoader`` of worker processes with pinned
memory, whole batches as items); :class:`BatchLoader` (threads, one batch read ahead) serves the
fixed-composition teacher batches and is the baseline of ``benchmarks/loader_speed.py``.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

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


# --- the process-based data path used for training ------------------------------------------------
class BatchSource:
    """Picklable recipe of one training image: decode, resize, augment -> uint8 [S, S, 3].

    Normalisation happens on the training device (:func:`to_model_input`), so workers ship
    uint8 (a quarter of the bytes of float32) through shared and pinned memory. ``decoded``: a
    decoded-image cache (training/decoded_cache.py) holding row i = image i decoded and resized,
    read memory-mapped instead of decoding (same pixels).
    """

    def __init__(self, paths: Sequence[Path], input_size: int, seed: int, augment: bool = False,
                 ops: int = 3, magnitude: int = 9, fast_decode: bool = True, decoded: Path | None = None) -> None:
        self.paths, self.size, self.seed = list(paths), input_size, seed
        self.augment, self.ops, self.magnitude, self.fast_decode = augment, ops, magnitude, fast_decode
        if decoded is not None and not fast_decode:
            raise ValueError("a decoded-image cache holds the fast_decode pixels")
        self.decoded = decoded
        self._rows: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_rows": None}  # each worker maps the cache itself

    def _decode(self, index: int) -> np.ndarray:
        if self.decoded is not None:
            if self._rows is None:
                from vpr_ros.training.decoded_cache import open_rows

                self._rows = open_rows(self.decoded, len(self.paths), self.size)
            return np.array(self._rows[index])
        img = read_rgb(self.paths[index], self.size if self.fast_decode else 0)
        return _shrink(img, self.size) if self.fast_decode else resize_square(img, self.size)

    def image(self, index: int, step: int, slot: int) -> np.ndarray:
        """uint8 [S, S, 3] of image ``index`` as seen at ``step`` in position ``slot`` of the global batch.
        Large JPEGs decode at a reduced scale still at least S on their shorter side, which the
        area resize then brings to S."""
        img = self._decode(index)
        if self.augment:
            img = rand_augment(img, np.random.default_rng([self.seed, step, slot, 2]), self.ops, self.magnitude)
        return np.ascontiguousarray(img)

    def images(self, step: int, indices: np.ndarray, first_slot: int = 0) -> torch.Tensor:
        """uint8 [B, S, S, 3] of ``indices`` (slots ``first_slot``.. of the global batch)."""
        return torch.from_numpy(np.stack([self.image(int(i), step, first_slot + j) for j, i in enumerate(indices)]))


def _shrink(img: np.ndarray, size: int) -> np.ndarray:
    """[H, W, 3] -> [size, size, 3]: area interpolation from 2x or more, bilinear below (a
    reduced-scale JPEG decode has already done the antialiasing; area is 10x slower there)."""
    import cv2

    h, w = img.shape[:2]
    if min(h, w) >= 2 * size:
        return resize_square(img, size)
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)


class StepBatches(torch.utils.data.Dataset):
    """Item ``step`` = (step, uint8 images [b, S, S, 3], labels [b], indices [b]) of this rank's
    ``share`` of the global batch of that step; a pure function of (seed, step, share)."""

    def __init__(self, source: BatchSource, plan: BatchPlan, share: slice | None = None) -> None:
        self.source, self.plan, self.share = source, plan, share or slice(None)

    def __len__(self) -> int:
        return 1 << 40  # indexed by step through the sampler; never enumerated

    def __getitem__(self, step: int) -> tuple[int, torch.Tensor, torch.Tensor, np.ndarray]:
        idx, labels = self.plan.batch(step)
        first = self.share.start or 0
        idx, labels = idx[self.share], labels[self.share]
        return step, self.source.images(step, idx, first), torch.from_numpy(np.asarray(labels, np.int64)), idx


def _quiet_worker(_: int) -> None:
    """Each worker decodes with one thread (workers are the parallelism)."""
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def _whole_batch(items: Any) -> Any:
    return items  # batch_size=None: an item is already a whole batch


def step_loader(dataset: torch.utils.data.Dataset, start: int, stop: int, workers: int, pin_memory: bool,
                prefetch: int = 2) -> torch.utils.data.DataLoader:
    """A DataLoader over steps start..stop-1 with ``workers`` processes (0 = in this process),
    pinned memory and ``prefetch`` batches read ahead per worker; steps come out in order."""
    kw: dict[str, Any] = {}
    if workers > 0:
        # forkserver, not fork: a forked copy of a process whose OpenMP / OpenCV thread pools are
        # running can deadlock in its first parallel call
        kw = {"persistent_workers": True, "prefetch_factor": prefetch, "worker_init_fn": _quiet_worker,
              "multiprocessing_context": "forkserver"}
    # its own generator: starting workers must not draw from the training process's RNG, or a
    # resumed run (which starts them at another step) would diverge from an uninterrupted one
    return torch.utils.data.DataLoader(dataset, batch_size=None, sampler=range(start, stop), num_workers=workers,
                                       pin_memory=pin_memory, collate_fn=_whole_batch,
                                       generator=torch.Generator().manual_seed(start), **kw)


def to_model_input(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 [B, S, S, 3] (RGB) -> normalised float32 [B, 3, S, S] on ``device``, as ``preprocess``."""
    from vpr_ros.config import IMAGENET_MEAN, IMAGENET_STD

    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255.0
    inv_std = 1.0 / (torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255.0)
    # one converting copy into NCHW, then in place (7x faster on a CPU than three temporaries)
    x = images.to(device, non_blocking=True).permute(0, 3, 1, 2)
    x = x.to(torch.float32, memory_format=torch.contiguous_format)
    return x.sub_(mean).mul_(inv_std)
