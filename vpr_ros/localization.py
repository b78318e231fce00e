"""Localizer: image -> descriptor -> map search -> matches, pose estimate, loop closure.

ROS-free; the localizer node converts messages and calls :meth:`Localizer.localize`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from vpr_ros.config import LocalizerConfig
from vpr_ros.errors import MapError
from vpr_ros.loop_closure import LoopClosureDetector, LoopDecision
from vpr_ros.mapping.map_store import Keyframe, ModelIdentity, VprMap
from vpr_ros.runtime.base import DescriptorBackend
from vpr_ros.runtime.preprocess import preprocess

#: Orientation standard deviation (rad) reported in /vpr/pose: a place match says
#: little about heading beyond "roughly as the keyframe".
ORIENTATION_SIGMA = 0.35


@dataclass(frozen=True)
class Match:
    """One map candidate of a query, ranked by cosine ``score``."""

    rank: int
    db_id: int
    score: float
    keyframe: Keyframe


@dataclass
class LocalizationResult:
    """Everything the node publishes for one query frame."""

    stamp: float
    camera: str
    matches: list[Match]
    accepted: bool                      # top-1 score >= threshold
    pose: tuple[float, ...] | None      # matched keyframe pose (x, y, z, qx, qy, qz, qw)
    covariance: list[float]             # 6x6 row-major (x, y, z, roll, pitch, yaw), always filled
    loop: LoopDecision | None
    timings_ms: dict[str, float] = field(default_factory=dict)


def pose_covariance(score: float, position_sigma: float) -> list[float]:
    """6x6 covariance for a match of cosine ``score``: sigma grows as the score falls."""
    s = position_sigma / max(score, 0.05)
    diag = [s * s, s * s, s * s, ORIENTATION_SIGMA**2, ORIENTATION_SIGMA**2, ORIENTATION_SIGMA**2]
    cov = [0.0] * 36
    for i, v in enumerate(diag):
        cov[i * 7] = v
    return cov


class Localizer:
    """Matches query images against a map with a backend of the same model."""

    def __init__(self, backend: DescriptorBackend, vpr_map: VprMap, cfg: LocalizerConfig) -> None:
        self.backend = backend
        self.cfg = cfg
        self.map = vpr_map
        self.set_map(vpr_map)
        self.loops = LoopClosureDetector(cfg.score_threshold, cfg.min_time_separation,
                                         cfg.temporal_consistency, cfg.consistency_window,
                                         cfg.max_loop_closure_rate)

    def set_map(self, vpr_map: VprMap) -> None:
        """Swap in another map (checked against the backend's model)."""
        vpr_map.check_model(ModelIdentity.of_backend(self.backend), where="map")
        if len(vpr_map) == 0:
            raise MapError("map is empty: build it first (vpr_ros build-map or the map_builder node)")
        self.map = vpr_map
        if hasattr(self, "loops"):
            self.loops.reset()

    def describe(self, rgb: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        """One RGB image -> (descriptor [D], timings in ms)."""
        t0 = time.perf_counter()
        x = preprocess(rgb, self.backend.input_size)[None]
        t1 = time.perf_counter()
        d = self.backend.infer(x)[0]
        t2 = time.perf_counter()
        return d, {"preprocess": (t1 - t0) * 1e3, "inference": (t2 - t1) * 1e3}

    def localize(self, rgb: np.ndarray, stamp: float, camera: str = "image") -> LocalizationResult:
        """Match one frame taken at ``stamp`` (seconds) by ``camera``."""
        desc, timings = self.describe(rgb)
        t0 = time.perf_counter()
        # with recent keyframes excluded, look further down the ranking to still fill top_k
        k = self.cfg.top_k if self.cfg.exclude_recent <= 0 else min(len(self.map), max(64, 8 * self.cfg.top_k))
        scores, ids = self.map.search(desc[None], k)
        timings["search"] = (time.perf_counter() - t0) * 1e3
        kept = [(float(s), int(i)) for s, i in zip(scores[0], ids[0]) if i >= 0 and
                abs(self.map.keyframes[int(i)].stamp - stamp) >= self.cfg.exclude_recent]
        if not kept:
            raise MapError(f"no map keyframe older than exclude_recent={self.cfg.exclude_recent}s "
                           f"before the query at {stamp:.3f}")
        matches = [Match(r, i, s, self.map.keyframes[i]) for r, (s, i) in enumerate(kept[: self.cfg.top_k])]
        top = matches[0]
        accepted = top.score >= self.cfg.score_threshold
        loop = self.loops.update(stamp, top.keyframe.stamp, top.db_id, top.score)
        return LocalizationResult(
            stamp=stamp, camera=camera, matches=matches, accepted=accepted,
            pose=top.keyframe.pose if accepted else None,
            covariance=pose_covariance(top.score, self.cfg.position_sigma),
            loop=loop, timings_ms=timings)
