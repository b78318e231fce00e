"""Loop closure while mapping (ROS-free): a map builder matches each new keyframe against its own
growing map before adding it, with the localizer's search, re-ranking, geometric verification and
acceptance rules, so that a SLAM back end gets ``[t_cur, t_pre]`` pairs of *its own session*.

Bounded cost as the map grows: the keyframes this session took in the last ``exclude_recent``
seconds are skipped by an id range inside the index search (ids follow time), not by fetching
more results and filtering; the index itself grows online (see :func:`live_index_type`).
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from vpr_ros.config import IndexConfig, LiveLoopConfig, VerificationConfig
from vpr_ros.mapping.index import choose_type
from vpr_ros.localization import LocalizationResult, Localizer

if TYPE_CHECKING:
    from vpr_ros.mapping.map_store import Keyframe, VprMap
    from vpr_ros.runtime.base import DescriptorBackend
    from vpr_ros.verification.features import CameraIntrinsics, LocalFeatures


def live_index_type(cfg: IndexConfig, count: int = 0, dim: int | None = None) -> str:
    """The index kind of a map that closes loops as it grows: HNSW takes vectors one by one at a
    cost that grows with log N (exact search grows with N), so 'auto' means HNSW from the start,
    and 'compact' once HNSW would not fit the memory budget (see :func:`choose_type`)."""
    return choose_type(cfg, count, dim, live=True)


@dataclass(frozen=True)
class LiveClosure:
    """The outcome of one new keyframe: the localizer's result against the older keyframes, and
    whether its top match belongs to an earlier session (a prior map), whose stamps mean nothing
    to the running SLAM back end."""

    result: LocalizationResult
    prior: bool

    @property
    def publish_pair(self) -> bool:
        """Send ``[t_cur, t_pre]`` to the SLAM back end: verified, and within this session."""
        loop = self.result.loop
        return loop is not None and loop.publish and not self.prior


class LiveLoopCloser:
    """Matches new keyframes of session ``session`` against ``vmap`` (the builder's own map, which
    may hold earlier sessions' keyframes too) before they are added."""

    def __init__(self, backend: "DescriptorBackend", vmap: "VprMap", cfg: LiveLoopConfig,
                 verification: VerificationConfig, session: int) -> None:
        self.cfg = cfg
        self.session = session
        self.localizer = Localizer(backend, vmap, cfg.localizer(), verification, allow_empty=True)
        self._first = len(vmap)         # id of this session's first keyframe
        self._stamps: list[float] = []  # running maximum of this session's keyframe stamps, by id

    def update_config(self, cfg: LiveLoopConfig, verification: VerificationConfig | None = None) -> None:
        self.cfg = cfg
        self.localizer.update_config(cfg.localizer(), verification)

    def added(self, keyframe: "Keyframe") -> None:
        """Record a keyframe added to the map (every one, with or without a closure, in id order). A
        keyframe of an earlier session (a pending one of an earlier run, encoded first) counts as old."""
        if keyframe.session != self.session:
            if self._stamps:
                raise ValueError("a keyframe of an earlier session after this session's own")
            self._first += 1
            return
        last = self._stamps[-1] if self._stamps else -np.inf
        self._stamps.append(max(float(keyframe.stamp), last))

    def before(self, stamp: float) -> int:
        """Ids below this are searched: every earlier session's keyframe, and this session's taken
        at least ``exclude_recent`` s before ``stamp``."""
        return self._first + bisect.bisect_right(self._stamps, stamp - self.cfg.exclude_recent)

    def check(self, descriptor: np.ndarray, features: "LocalFeatures | None", keyframe: "Keyframe",
              intrinsics: "CameraIntrinsics | None" = None) -> LiveClosure | None:
        """Match a new keyframe (descriptor [D] or [1, D] and its local features, as it will be
        stored) before it is added; None when no older keyframe exists yet."""
        if features is not None and intrinsics is not None and features.intrinsics is None:
            features.intrinsics = intrinsics
        r = self.localizer.match(np.asarray(descriptor).ravel(), keyframe.stamp, keyframe.camera,
                                 intrinsics or (features.intrinsics if features is not None else None), features,
                                 before=self.before(keyframe.stamp))
        if r is None:
            return None
        return LiveClosure(r, prior=r.matches[0].keyframe.session != self.session)
