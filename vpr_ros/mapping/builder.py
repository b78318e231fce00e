"""MapBuilder: images + poses -> keyframes -> descriptors -> VprMap.

The one code path used by the map_builder node, the offline builders and the demo.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from vpr_ros.config import IndexConfig, KeyframeConfig, VerificationConfig
from vpr_ros.mapping.index import choose_type
from vpr_ros.errors import DamagedPending, ImageError, MapError
from vpr_ros.mapping.keyframes import KeyframeSelector
from vpr_ros.mapping.map_store import Keyframe, ModelIdentity, VprMap
from vpr_ros.runtime.base import DescriptorBackend
from vpr_ros.runtime.preprocess import preprocess_batch

if TYPE_CHECKING:
    from vpr_ros.mapping.store.pending import PendingFrame
    from vpr_ros.verification.features import CameraIntrinsics, LocalFeatures

log = logging.getLogger(__name__)


class MapBuilder:
    """Accumulates keyframes into a map; ``offer`` one frame at a time or ``add_many``."""

    def __init__(self, backend: DescriptorBackend, keyframes: KeyframeConfig,
                 map_frame: str = "map", source: str = "", base: VprMap | None = None,
                 index: IndexConfig | None = None, verification: VerificationConfig | None = None,
                 intrinsics: "CameraIntrinsics | None" = None) -> None:
        """``verification.features`` (default 'sift') are stored with every keyframe, with
        ``intrinsics`` (a static camera model, e.g. from a bag's CameraInfo) when given."""
        from vpr_ros.verification.verifier import Verifier

        self.backend = backend
        self.index_cfg = index or IndexConfig()
        self.live = False  # closing loops as it grows (HNSW from the start; see choose_type)
        self.verifier = Verifier(verification or VerificationConfig())
        self.verifier.check_backend(backend)
        self.intrinsics = intrinsics
        self.selector = KeyframeSelector(keyframes)
        identity = ModelIdentity.of_backend(backend)
        if base is not None:
            base.check_model(identity, where="map to extend")
            if base.manifest.local_features and self.verifier.enabled and \
                    base.manifest.local_features != self.verifier.cfg.features:
                raise MapError(f"map to extend stores '{base.manifest.local_features}' local features, not "
                               f"'{self.verifier.cfg.features}' (set verification.features accordingly)")
            self.map = base
        else:
            self.map = VprMap.create(identity, map_frame=map_frame, source=source)
        self.map.search_cfg = self.index_cfg
        self.offered = 0
        self._last_descriptor: np.ndarray | None = None
        #: keyframes this builder adds belong to this recording session (a map it extends has older ones)
        self.session = self.map.next_session()

    def _infer(self, images: Sequence[np.ndarray]) -> "tuple[np.ndarray, Sequence[np.ndarray | None]]":
        """Descriptors [N, D] and, for dense features, the network's local output [N, P, C] of the
        same forward pass (else N Nones)."""
        batch = preprocess_batch(list(images), self.backend.input_size)
        if self.verifier.dense:
            return self.backend.infer_local(batch)
        return self.backend.infer(batch), [None] * len(images)

    def _novel(self, rgb: np.ndarray, depth: Any = None) -> "tuple[np.ndarray, LocalFeatures | None] | None":
        """(descriptor [1, D], local features) of the frame if it is novel enough to become a
        keyframe, else None. Local features, and the depth (an array or a callable returning one),
        are only taken for a novel frame."""
        desc, local = self._infer([rgb])
        last = self._last_descriptor
        if last is not None and not self.selector.is_novel(float(desc[0] @ last)):
            return None
        return desc, self.features(rgb, depth() if callable(depth) else depth, local=local[0])

    def encode(self, images: Sequence[np.ndarray], depths: "Sequence[np.ndarray | None] | None" = None,
               intrinsics: "CameraIntrinsics | None" = None) -> "tuple[np.ndarray, list[LocalFeatures | None]]":
        """Global descriptors [N, D] and local features of keyframe images, with one forward pass
        (dense features are the network's second output)."""
        desc, local = self._infer(images)
        depths = list(depths) if depths is not None else [None] * len(images)
        return desc, [self.features(im, d, intrinsics, loc) for im, d, loc in zip(images, depths, local)]

    def features(self, rgb: np.ndarray, depth: np.ndarray | None = None,
                 intrinsics: "CameraIntrinsics | None" = None,
                 local: np.ndarray | None = None) -> "LocalFeatures | None":
        """Local features of a keyframe image (with 3-D points when an aligned depth image [H, W] in
        metres and the intrinsics are given); dense features need the network's ``local`` output
        [P, C] for this image (:meth:`encode` passes it)."""
        f = self.verifier.features(rgb, local)
        intr = intrinsics or self.intrinsics
        if f is None:
            return None
        if depth is not None and intr is not None:
            return f.with_depth(depth, intr)
        f.intrinsics = intr
        return f

    def add_encoded(self, desc: np.ndarray, kfs: list[Keyframe],
                    feats: "list[LocalFeatures | None] | None" = None, pending: Sequence[int] = ()) -> list[int]:
        """Add keyframes whose descriptors [N, D] (and local features) are already computed; on a
        durable map the ``pending`` frames they were encoded from are deleted in the same commit."""
        return self._add(desc, kfs, feats, pending)

    def encode_frame(self, frame: "PendingFrame") -> "tuple[np.ndarray, list[LocalFeatures | None]]":
        """Descriptor [1, D] and local features of an accepted keyframe stored before encoding (its
        raw image, aligned depth and camera model, as the node received them)."""
        rgb = frame.image.rgb()
        intr = frame.intrinsics
        if intr is not None and (intr.width, intr.height) != (rgb.shape[1], rgb.shape[0]):
            intr = None
        depth = None
        if frame.depth is not None and intr is not None:
            try:
                depth = frame.depth.depth_metres()
            except ImageError as exc:  # the keyframe is kept, without 3-D points
                log.warning("keyframe at %.3f: depth image not used: %s", frame.keyframe.stamp, exc)
            if depth is not None and depth.shape != rgb.shape[:2]:
                depth = None
        return self.encode([rgb], [depth], intr)

    def encode_pending(self, frame: "PendingFrame") -> int:
        """Encode a pending keyframe and add it in place of its pending entry; returns its map id."""
        desc, feats = self.encode_frame(frame)
        return self._add(desc, [frame.keyframe], feats, [frame.seq])[0]

    def finish_pending(self, progress: bool = False, drop_damaged: bool = False) -> tuple[int, list[str], list[str]]:
        """Encode every pending keyframe of a writer's map (left by a node that was stopped or
        killed before encoding them); a frame whose image cannot be decoded is dropped with the
        reason. A damaged stored row (checksum, format) is skipped and reported, or dropped with
        ``drop_damaged``; it never stops the good ones behind it. Returns (keyframes added,
        reasons of the dropped, reasons of the damaged ones left in place)."""
        seqs = self.map.pending_frames()
        added, dropped, damaged = 0, [], []
        bar = None
        if progress and seqs:
            from tqdm import tqdm

            bar = tqdm(total=len(seqs), desc="encoding pending keyframes", unit="kf")
        try:
            for seq in seqs:
                try:
                    self.encode_pending(self.map.read_pending(seq))
                    added += 1
                except ImageError as exc:
                    self.map.drop_pending(seq)
                    dropped.append(f"pending keyframe {seq}: {exc}")
                except DamagedPending as exc:
                    if drop_damaged:
                        self.map.drop_pending(seq)
                        dropped.append(str(exc))
                    else:
                        damaged.append(str(exc))
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        return added, dropped, damaged

    def consider_novel(self, desc: np.ndarray, kf: Keyframe, feats: "LocalFeatures | None" = None) -> int | None:
        """Appearance trigger for a frame the motion rules rejected: add it if it is novel."""
        last = self._last_descriptor
        if last is not None and not self.selector.is_novel(float(desc[0] @ last)):
            return None
        self.selector.accept(kf.stamp, kf.pose)
        return self._add(desc, [kf], [feats])[0]

    def _add(self, desc: np.ndarray, kfs: list[Keyframe],
             feats: "Sequence[LocalFeatures | None] | None" = None, pending: Sequence[int] = ()) -> list[int]:
        ids = self.map.add(desc, kfs, feats if feats is not None and any(f is not None for f in feats) else None,
                           done_pending=pending)
        self._last_descriptor = desc[-1]
        return ids

    def offer(self, rgb: np.ndarray, keyframe: Keyframe) -> int | None:
        """Consider one frame; returns its map id if it became a keyframe, else None."""
        self.offered += 1
        keyframe.session = self.session
        if not all(math.isfinite(v) for v in keyframe.pose):
            raise MapError(f"frame at stamp {keyframe.stamp}: pose has NaN/inf values")
        if self.selector.offer(keyframe.stamp, keyframe.pose):
            desc, feats = self.encode([rgb])
            return self._add(desc, [keyframe], feats)[0]
        if self.selector.cfg.novelty_threshold > 0:
            novel = self._novel(rgb)
            if novel is not None:
                self.selector.accept(keyframe.stamp, keyframe.pose)
                return self._add(novel[0], [keyframe], [novel[1]])[0]
        return None

    def add_many(self, frames: Iterable[tuple],
                 batch_size: int = 8, progress: bool = False, total: int | None = None) -> list[int]:
        """Offer many frames (streamed); keyframes are encoded in batches. Returns the new ids.

        Each frame is (image, Keyframe) or (image, Keyframe, aligned depth in metres or None). An
        image or depth may be given as a callable returning it: it is only decoded if the frame
        becomes a keyframe (cheap for long recordings)."""
        ids: list[int] = []
        pending: list[tuple] = []
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total if total is not None else (len(frames) if hasattr(frames, "__len__") else None),
                       desc="building map", unit="img")
        try:
            for item in frames:
                rgb, kf = item[0], item[1]
                depth = item[2] if len(item) > 2 else None  # optional aligned depth (array or callable)
                self.offered += 1
                kf.session = self.session
                if not all(math.isfinite(v) for v in kf.pose):
                    raise MapError(f"frame at stamp {kf.stamp}: pose has NaN/inf values")
                if self.selector.offer(kf.stamp, kf.pose):
                    pending.append((rgb() if callable(rgb) else rgb, kf, depth() if callable(depth) else depth))
                elif self.selector.cfg.novelty_threshold > 0:
                    ids += self._flush(pending)  # compare with the latest keyframe, in order
                    image = rgb() if callable(rgb) else rgb
                    novel = self._novel(image, depth)
                    if novel is not None:
                        self.selector.accept(kf.stamp, kf.pose)
                        ids += self._add(novel[0], [kf], [novel[1]])
                if len(pending) >= batch_size:
                    ids += self._flush(pending)
                if bar is not None:
                    bar.update(1)
            ids += self._flush(pending)
        finally:
            if bar is not None:
                bar.close()  # an error then prints on a line of its own
        return ids

    def _flush(self, pending: list[tuple]) -> list[int]:
        if not pending:
            return []
        desc, feats = self.encode([p[0] for p in pending], [p[2] for p in pending])
        ids = self._add(desc, [p[1] for p in pending], feats)
        pending.clear()
        return ids

    def save(self, map_dir: str | Path | None = None, replace_existing: bool = False, lock: Any = None) -> Path:
        """Write the map (see :meth:`VprMap.save`), converting the index to the configured type first."""
        kind = choose_type(self.index_cfg, len(self.map), self.map.model.descriptor_dim, live=self.live)
        if kind != self.map.manifest.index_type:
            log.info("building a '%s' index over %d keyframes", kind, len(self.map))
            self.map.reindex(kind, self.index_cfg)
        path = self.map.save(map_dir, replace_existing=replace_existing, lock=lock)
        log.debug("saved map with %d keyframes to %s", len(self.map), path)
        return path


def frames_from_lists(images: Sequence[np.ndarray], stamps: Sequence[float],
                      poses: Sequence[Sequence[float]], camera: str = "image",
                      image_refs: Sequence[str] | None = None) -> list[tuple[np.ndarray, Keyframe]]:
    """Zip parallel lists into (rgb, Keyframe) pairs for :meth:`MapBuilder.add_many`."""
    refs = image_refs or [""] * len(images)
    return [(im, Keyframe(stamp=float(t), pose=tuple(float(v) for v in p), camera=camera, image_ref=r))  # type: ignore[arg-type]
            for im, t, p, r in zip(images, stamps, poses, refs)]
