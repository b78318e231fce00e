"""The distillation teacher: run on every batch, or once over the training images and cached.

The teachers' cross-image encoders (CricaVPR, Super-CricaVPR) make their outputs depend on the
other images of a batch, so the cache fixes the composition: images in the order given (grouped by place for
GSV-Cities), ``batch`` at a time. The cache is a float16 ``.npy`` [N, D] (memory-mapped while
training) beside a JSON sidecar that records what it was computed from; a cache that does not
match the teacher, the image list or the composition is refused, never silently reused.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from vpr_ros.config import ModelConfig
from vpr_ros.datasets import check_sidecar, fingerprint_files
from vpr_ros.errors import CheckpointError, ConfigError
from vpr_ros.model.checkpoints import load_strict
from vpr_ros.model.factory import ModelInfo, build_model
from vpr_ros.model.student import PlaceModel

log = logging.getLogger(__name__)


def load_teacher(cfg: ModelConfig, device: torch.device, student_dim: int) -> tuple[PlaceModel, ModelInfo]:
    """The teacher in eval mode, frozen, on ``device``; its descriptor must match the student's."""
    model, info = build_model(cfg)
    if info.descriptor_dim != student_dim:
        raise ConfigError(f"teacher ({cfg.arch}/{cfg.backbone}) gives {info.descriptor_dim}-d descriptors, "
                          f"the student {student_dim}-d: distillation needs equal sizes")
    if not cfg.weights:
        log.warning("teacher has no weights (teacher.weights is empty): distilling from a random network")
    return model.to(device), info


#: What SciceVPR's train_scicevpr.py copies from the Super-CricaVPR teacher into the student
#: before training, and then keeps frozen.
COPIED_FROM_TEACHER = ("backbone", "conv")


def start_from_teacher(student: PlaceModel, teacher: PlaceModel) -> int:
    """Copy the teacher's DINOv2 backbone and conv 1x1 (3072 -> 768 fusion of the last four
    blocks) into a SciceVPR student, as the official SciceVPR training does; returns the number
    of tensors copied. Both must share the backbone preset and input size (settings check it)."""
    count = 0
    for name in COPIED_FROM_TEACHER:
        state = getattr(teacher, name).state_dict()
        load_strict(getattr(student, name), state, f"teacher {name} -> student {name}")
        count += len(state)
    return count


def freeze_copied(student: PlaceModel) -> None:
    """Keep what :func:`start_from_teacher` copied frozen (the official code freezes it)."""
    for name in COPIED_FROM_TEACHER:
        getattr(student, name).requires_grad_(False)


@dataclass(frozen=True)
class CacheKey:
    """What a teacher cache was computed from."""

    teacher_id: str
    input_size: int
    batch: int
    images_sha256: str
    count: int

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.__dict__, sort_keys=True).encode()).hexdigest()[:16]


class TeacherCache:
    """Cached teacher descriptors [N, D] for images in a fixed order; ``rows(order_ids)``."""

    def __init__(self, npy: Path, key: CacheKey) -> None:
        self.path, self.key = npy, key
        try:
            self.array = np.load(npy, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{npy}: unreadable teacher cache ({exc}); delete it to recompute") from None
        if self.array.ndim != 2 or self.array.shape[0] != key.count:
            raise CheckpointError(f"{npy}: teacher cache has shape {self.array.shape}, expected "
                                  f"[{key.count}, D]; delete it to recompute")

    def rows(self, ids: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.array[np.asarray(ids)], np.float32))


def open_or_build_cache(folder: Path, teacher: PlaceModel, info: ModelInfo, paths: Sequence[Path],
                        loader_fn, batch: int, device: torch.device, progress: bool = True,
                        amp: torch.dtype | None = None) -> TeacherCache:
    """Load the cache for (teacher, images, composition) from ``folder`` or compute it.

    ``loader_fn(indices) -> float32 tensor [b, 3, S, S]`` reads un-augmented images; ``amp``:
    the autocast dtype of the teacher's forward passes (as in training), or None.
    """
    key = CacheKey(f"{info.model_id}|{info.weights_sha256}", info.input_size, batch,
                   fingerprint_files(paths).hexdigest(), len(paths))
    folder.mkdir(parents=True, exist_ok=True)
    npy, meta = folder / f"teacher-{key.digest}.npy", folder / f"teacher-{key.digest}.json"
    if npy.is_file() and meta.is_file():
        check_sidecar(meta, key.__dict__, "teacher cache", "recompute", CheckpointError)
        log.info("teacher outputs: using cache %s", npy)
        return TeacherCache(npy, key)
    log.info("teacher outputs: computing %d images in batches of %d into %s", len(paths), batch, npy)
    tmp = npy.with_name(f".{npy.name}.tmp-{os.getpid()}.npy")
    out = None
    starts = range(0, len(paths), batch)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="teacher cache", unit="batch")
    from vpr_ros.training.validation import autocast_for

    with torch.inference_mode(), autocast_for(device, amp):
        for s in starts:
            ids = np.arange(s, min(s + batch, len(paths)))
            d = teacher(loader_fn(ids).to(device)).float().cpu().numpy()
            if out is None:
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(len(paths), d.shape[1]))
            out[ids] = d
    assert out is not None
    out.flush()
    del out
    os.replace(tmp, npy)
    meta.write_text(json.dumps(key.__dict__, indent=1))
    return TeacherCache(npy, key)
