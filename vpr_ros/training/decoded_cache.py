"""Training images decoded and resized once: a uint8 [N, S, S, 3] file the loader workers read.

Decoding a GSV-Cities JPEG is about two thirds of a training image's CPU time (the rest is
RandAugment). With ``data.decoded_cache`` set, the first run writes every training image as the
loader sees it before augmentation (reduced-scale JPEG decode, resize to S x S) into
``images-<digest>.npy`` with a JSON sidecar recording what it was made from; every later batch
is a memory-mapped read plus augmentation. The pixels are those of decoding each time, so a run
with the cache trains on exactly the batches of a run without it.

Disk: N x S x S x 3 bytes (GSV-Cities at 224 px: about 560k images, 84 GB). A cache whose
sidecar does not match the image list, the size or the decoder is refused, never reused.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from vpr_ros.datasets import check_sidecar, fingerprint_files
from vpr_ros.errors import ConfigError, DatasetError

log = logging.getLogger(__name__)

#: Changes whenever what a cached row holds changes (decoder flags, resize rule).
DECODER = "reduced-scale decode + shrink, v1"
#: Images per work item while building.
CHUNK = 64


@dataclass(frozen=True)
class DecodedKey:
    """What a decoded-image cache was made from."""

    images_sha256: str
    count: int
    size: int
    decoder: str

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def open_rows(npy: Path, count: int, size: int) -> np.ndarray:
    """The memory-mapped cache [count, size, size, 3] uint8; DatasetError when it is not that."""
    try:
        rows = np.load(npy, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{npy}: unreadable decoded-image cache ({exc}); delete it to rebuild") from None
    if rows.shape != (count, size, size, 3) or rows.dtype != np.uint8:
        raise DatasetError(f"{npy}: decoded-image cache holds {rows.dtype} {list(rows.shape)}, expected uint8 "
                           f"[{count}, {size}, {size}, 3]; delete it to rebuild")
    return rows


class _Chunks(torch.utils.data.Dataset):
    """Item i = (first index, uint8 [n, S, S, 3]) of chunk i, decoded as the training loader does."""

    def __init__(self, paths: Sequence[Path], size: int) -> None:
        from vpr_ros.training.batches import BatchSource

        self.source = BatchSource(paths, size, seed=0, augment=False)
        self.count = len(paths)

    def __len__(self) -> int:
        return (self.count + CHUNK - 1) // CHUNK

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        ids = np.arange(i * CHUNK, min((i + 1) * CHUNK, self.count))
        return int(ids[0]), self.source.images(0, ids)


def open_or_build(folder: Path, paths: Sequence[Path], size: int, workers: int = 0,
                  progress: bool = True) -> Path:
    """The cache file for (``paths``, ``size``) in ``folder``, built first when absent.

    Built with ``workers`` processes (0 = in this process) into a temporary file that is renamed
    into place when complete, so an interrupted build leaves nothing that could be mistaken for a
    cache. Raises ConfigError when the disk cannot hold it, DatasetError for a mismatched cache.
    """
    key = DecodedKey(fingerprint_files(paths).hexdigest(), len(paths), size, DECODER)
    folder.mkdir(parents=True, exist_ok=True)
    npy, meta = folder / f"images-{key.digest}.npy", folder / f"images-{key.digest}.json"
    if npy.is_file() and meta.is_file():
        check_sidecar(meta, asdict(key), "decoded-image cache", "rebuild", DatasetError)
        open_rows(npy, key.count, size)
        log.info("decoded images: using cache %s", npy)
        return npy
    need = key.count * size * size * 3
    free = shutil.disk_usage(folder).free
    if need > free:
        raise ConfigError(f"data.decoded_cache: {key.count} images at {size} px need {need / 1e9:.3g} GB, "
                          f"{folder} has {free / 1e9:.3g} GB free")
    log.info("decoded images: decoding %d images once into %s (%.3g GB)", key.count, npy, need / 1e9)
    tmp = npy.with_name(f".{npy.name}.tmp-{socket.gethostname()}-{os.getpid()}.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(key.count, size, size, 3))
    from vpr_ros.training.batches import step_loader

    chunks = _Chunks(paths, size)
    items = step_loader(chunks, 0, len(chunks), workers, pin_memory=False)
    if progress:
        from tqdm import tqdm

        items = tqdm(items, total=len(chunks), desc="decoding images", unit="chunk")
    try:
        for first, images in items:
            out[first:first + len(images)] = images.numpy()
        out.flush()
        del out
        os.replace(tmp, npy)
    finally:
        tmp.unlink(missing_ok=True)
    meta.write_text(json.dumps(asdict(key), indent=1))
    return npy
