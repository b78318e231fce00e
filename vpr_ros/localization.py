"""Localizer: image -> descriptor -> map search -> matches, pose estimate, loop closure.

ROS-free; the localizer node converts messages and calls :meth:`Localizer.localize`.
"""
from __future__ import annotations

import threading
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


def _loop_detector(cfg: LocalizerConfig) -> LoopClosureDetector:
    return LoopClosureDetector(cfg.score_threshold, cfg.min_time_separation, cfg.temporal_consistency,
                               cfg.consistency_window, cfg.max_loop_closure_rate)


class Localizer:
    """Matches query images against a map with a backend of the same model.

    Thread-safe for one caller of :meth:`localize` plus any number of :meth:`set_map` /
    :meth:`update_config` callers: a query works on the (map, settings) it started with, and
    a swap takes effect from the next query on.
    """

    def __init__(self, backend: DescriptorBackend, vpr_map: VprMap, cfg: LocalizerConfig) -> None:
        self.backend = backend
        self.cfg = cfg
        self._lock = threading.Lock()
        self._check(vpr_map)
        self.map = vpr_map
        self.loops = _loop_detector(cfg)

    def _check(self, vpr_map: VprMap) -> None:
        vpr_map.check_model(ModelIdentity.of_backend(self.backend), where="map")
        if len(vpr_map) == 0:
            raise MapError("map is empty: build it first (vpr_ros_build_map or the map_builder node)")

    def set_map(self, vpr_map: VprMap) -> None:
        """Swap in another map (checked against the backend's model); the loop-closure streak restarts."""
        self._check(vpr_map)
        with self._lock:
            self.map = vpr_map
            self.loops.reset()

    def update_config(self, cfg: LocalizerConfig) -> None:
        """New settings (top_k, thresholds, loop-closure rules...) from the next query on."""
        with self._lock:
            rules_changed = (cfg.score_threshold, cfg.min_time_separation, cfg.temporal_consistency,
                             cfg.consistency_window, cfg.max_loop_closure_rate) != (
                self.cfg.score_threshold, self.cfg.min_time_separation, self.cfg.temporal_consistency,
                self.cfg.consistency_window, self.cfg.max_loop_closure_rate)
            self.cfg = cfg
            if rules_changed:
                published, last = self.loops.published, self.loops.last_published
                self.loops = _loop_detector(cfg)
                self.loops.published, self.loops.last_published = published, last

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
        with self._lock:  # one consistent (map, settings, rules) for the whole query
            vmap, cfg, loops = self.map, self.cfg, self.loops
        desc, timings = self.describe(rgb)
        t0 = time.perf_counter()
        # with recent keyframes excluded, look further down the ranking to still fill top_k
        k = cfg.top_k if cfg.exclude_recent <= 0 else min(len(vmap), max(64, 8 * cfg.top_k))
        scores, ids = vmap.search(desc[None], k)
        timings["search"] = (time.perf_counter() - t0) * 1e3
        kept = [(float(s), int(i)) for s, i in zip(scores[0], ids[0]) if i >= 0 and
                abs(vmap.keyframes[int(i)].stamp - stamp) >= cfg.exclude_recent]
        if not kept:
            raise MapError(f"no map keyframe older than exclude_recent={cfg.exclude_recent}s "
                           f"before the query at {stamp:.3f}")
        matches = [Match(r, i, s, vmap.keyframes[i]) for r, (s, i) in enumerate(kept[: cfg.top_k])]
        top = matches[0]
        accepted = top.score >= cfg.score_threshold
        with self._lock:
            # a map swapped in during this query resets the streak: do not feed it a stale match
            loop = loops.update(stamp, top.keyframe.stamp, top.db_id, top.score) if vmap is self.map else None
        return LocalizationResult(
            stamp=stamp, camera=camera, matches=matches, accepted=accepted,
            pose=top.keyframe.pose if accepted else None,
            covariance=pose_covariance(top.score, cfg.position_sigma),
            loop=loop, timings_ms=timings)
