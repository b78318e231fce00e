"""MapBuilder: images + poses -> keyframes -> descriptors -> VprMap.

The one code path used by the map_builder node, the offline builders and the demo.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from vpr_ros.config import IndexConfig, KeyframeConfig
from vpr_ros.mapping.index import choose_type
from vpr_ros.errors import MapError
from vpr_ros.mapping.keyframes import KeyframeSelector
from vpr_ros.mapping.map_store import Keyframe, ModelIdentity, VprMap
from vpr_ros.runtime.base import DescriptorBackend
from vpr_ros.runtime.preprocess import preprocess_batch

log = logging.getLogger(__name__)


class MapBuilder:
    """Accumulates keyframes into a map; ``offer`` one frame at a time or ``add_many``."""

    def __init__(self, backend: DescriptorBackend, keyframes: KeyframeConfig,
                 map_frame: str = "map", source: str = "", base: VprMap | None = None,
                 index: IndexConfig | None = None) -> None:
        self.backend = backend
        self.index_cfg = index or IndexConfig()
        self.selector = KeyframeSelector(keyframes)
        identity = ModelIdentity.of_backend(backend)
        if base is not None:
            base.check_model(identity, where="map to extend")
            self.map = base
        else:
            self.map = VprMap.create(identity, map_frame=map_frame, source=source)
        self.offered = 0
        self._last_descriptor: np.ndarray | None = None

    def _novel(self, rgb: np.ndarray) -> np.ndarray | None:
        """The frame's descriptor [1, D] if it is novel enough to become a keyframe, else None."""
        desc = self.backend.infer(preprocess_batch([rgb], self.backend.input_size))
        last = self._last_descriptor
        return desc if last is None or self.selector.is_novel(float(desc[0] @ last)) else None

    def add_encoded(self, desc: np.ndarray, kfs: list[Keyframe]) -> list[int]:
        """Add keyframes whose descriptors [N, D] are already computed (the node's worker)."""
        return self._add(desc, kfs)

    def consider_novel(self, desc: np.ndarray, kf: Keyframe) -> int | None:
        """Appearance trigger for a frame the motion rules rejected: add it if it is novel."""
        last = self._last_descriptor
        if last is not None and not self.selector.is_novel(float(desc[0] @ last)):
            return None
        self.selector.accept(kf.stamp, kf.pose)
        return self._add(desc, [kf])[0]

    def _add(self, desc: np.ndarray, kfs: list[Keyframe]) -> list[int]:
        ids = self.map.add(desc, kfs)
        self._last_descriptor = desc[-1]
        return ids

    def offer(self, rgb: np.ndarray, keyframe: Keyframe) -> int | None:
        """Consider one frame; returns its map id if it became a keyframe, else None."""
        self.offered += 1
        if not all(math.isfinite(v) for v in keyframe.pose):
            raise MapError(f"frame at stamp {keyframe.stamp}: pose has NaN/inf values")
        if self.selector.offer(keyframe.stamp, keyframe.pose):
            desc = self.backend.infer(preprocess_batch([rgb], self.backend.input_size))
            return self._add(desc, [keyframe])[0]
        if self.selector.cfg.novelty_threshold > 0:
            novel = self._novel(rgb)
            if novel is not None:
                self.selector.accept(keyframe.stamp, keyframe.pose)
                return self._add(novel, [keyframe])[0]
        return None

    def add_many(self, frames: Iterable[tuple[np.ndarray | Callable[[], np.ndarray], Keyframe]],
                 batch_size: int = 8, progress: bool = False, total: int | None = None) -> list[int]:
        """Offer many frames (streamed); keyframes are encoded in batches. Returns the new ids.

        An image may be given as a callable returning it: it is only decoded if the frame
        becomes a keyframe (cheap for long recordings)."""
        ids: list[int] = []
        pending: list[tuple[np.ndarray, Keyframe]] = []
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total if total is not None else (len(frames) if hasattr(frames, "__len__") else None),
                       desc="building map", unit="img")
        try:
            for rgb, kf in frames:
                self.offered += 1
                if not all(math.isfinite(v) for v in kf.pose):
                    raise MapError(f"frame at stamp {kf.stamp}: pose has NaN/inf values")
                if self.selector.offer(kf.stamp, kf.pose):
                    pending.append((rgb() if callable(rgb) else rgb, kf))
                elif self.selector.cfg.novelty_threshold > 0:
                    ids += self._flush(pending)  # compare with the latest keyframe, in order
                    novel = self._novel(rgb() if callable(rgb) else rgb)
                    if novel is not None:
                        self.selector.accept(kf.stamp, kf.pose)
                        ids += self._add(novel, [kf])
                if len(pending) >= batch_size:
                    ids += self._flush(pending)
                if bar is not None:
                    bar.update(1)
            ids += self._flush(pending)
        finally:
            if bar is not None:
                bar.close()  # an error then prints on a line of its own
        return ids

    def _flush(self, pending: list[tuple[np.ndarray, Keyframe]]) -> list[int]:
        if not pending:
            return []
        desc = self.backend.infer(preprocess_batch([p[0] for p in pending], self.backend.input_size))
        ids = self._add(desc, [p[1] for p in pending])
        pending.clear()
        return ids

    def save(self, map_dir: str | Path) -> Path:
        """Write the map atomically, converting the index to the configured type first."""
        kind = choose_type(self.index_cfg, len(self.map))
        if kind != self.map.manifest.index_type:
            log.info("building a '%s' index over %d keyframes", kind, len(self.map))
            self.map.reindex(kind, self.index_cfg)
        path = self.map.save(map_dir)
        log.info("saved map with %d keyframes to %s", len(self.map), path)
        return path


def frames_from_lists(images: Sequence[np.ndarray], stamps: Sequence[float],
                      poses: Sequence[Sequence[float]], camera: str = "image",
                      image_refs: Sequence[str] | None = None) -> list[tuple[np.ndarray, Keyframe]]:
    """Zip parallel lists into (rgb, Keyframe) pairs for :meth:`MapBuilder.add_many`."""
    refs = image_refs or [""] * len(images)
    return [(im, Keyframe(stamp=float(t), pose=tuple(float(v) for v in p), camera=camera, image_ref=r))  # type: ignore[arg-type]
            for im, t, p, r in zip(images, stamps, poses, refs)]
