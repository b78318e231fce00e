"""Localizer: image -> descriptor -> map search -> matches, pose estimate, loop closure.

ROS-free; the localizer node converts messages and calls :meth:`Localizer.localize`.
"""
from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np

from vpr_ros.config import LocalizerConfig, VerificationConfig
from vpr_ros.errors import MapError
from vpr_ros.geometry import adjoint, compose, inverse
from vpr_ros.loop_closure import LoopClosureDetector, LoopDecision
from vpr_ros.mapping.map_store import Keyframe, ModelIdentity, VprMap
from vpr_ros.runtime.base import DescriptorBackend
from vpr_ros.runtime.preprocess import preprocess

if TYPE_CHECKING:
    from vpr_ros.verification.features import CameraIntrinsics, LocalFeatures

#: Orientation standard deviation (rad) reported in /vpr/pose: a place match says
#: little about heading beyond "roughly as the keyframe".
ORIENTATION_SIGMA = 0.35


@dataclass(frozen=True)
class Match:
    """One map candidate of a query: cosine ``score`` of the global descriptors, and the local
    re-ranking score (geometric inliers; -1 when not re-ranked) that ordered it."""

    rank: int
    db_id: int
    score: float
    keyframe: Keyframe
    local_score: int = -1


@dataclass
class LocalizationResult:
    """Everything the node publishes for one query frame."""

    stamp: float
    camera: str
    matches: list[Match]
    accepted: bool                      # top-1 score >= threshold
    pose: tuple[float, ...] | None      # robot pose (x, y, z, qx, qy, qz, qw): the keyframe's, or the
                                        # keyframe's composed with a verified metric relative pose
    covariance: list[float]             # 6x6 row-major (x, y, z, roll, pitch, yaw), always filled
    loop: LoopDecision | None
    timings_ms: dict[str, float] = field(default_factory=dict)
    relative: tuple[float, ...] | None = None      # verified query pose in the keyframe's base frame
    relative_covariance: np.ndarray | None = None  # 6x6 of ``relative``
    metric: bool = False                # ``pose`` is the robot's own, from a verified metric match (PnP)


def pose_covariance(score: float, position_sigma: float) -> list[float]:
    """6x6 covariance for a match of cosine ``score``: sigma grows as the score falls."""
    s = position_sigma / max(score, 0.05)
    diag = [s * s, s * s, s * s, ORIENTATION_SIGMA**2, ORIENTATION_SIGMA**2, ORIENTATION_SIGMA**2]
    cov = [0.0] * 36
    for i, v in enumerate(diag):
        cov[i * 7] = v
    return cov


def with_floor(covariance: Sequence[float], position_sigma: float, orientation_sigma: float) -> list[float]:
    """A 6x6 row-major covariance whose diagonal is raised to at least the floors' squares
    (positions, then orientations); adding a non-negative diagonal keeps it positive semi-definite."""
    cov = [float(c) for c in covariance]
    for i in range(6):
        floor = (position_sigma if i < 3 else orientation_sigma) ** 2
        if cov[i * 7] < floor:
            cov[i * 7] = floor
    return cov


def _loop_detector(cfg: LocalizerConfig) -> LoopClosureDetector:
    """The acceptance rules; with temporal_filter 'sequence' the score fed to them is already the
    sequence score, so no further consistency is required."""
    consistency = 1 if cfg.temporal_filter == "sequence" else cfg.temporal_consistency
    return LoopClosureDetector(cfg.score_threshold, cfg.min_time_separation, consistency,
                               cfg.consistency_window, cfg.max_loop_closure_rate)


def _rules(cfg: LocalizerConfig) -> tuple:
    return (cfg.score_threshold, cfg.min_time_separation, cfg.temporal_consistency, cfg.consistency_window,
            cfg.max_loop_closure_rate, cfg.temporal_filter, cfg.sequence_length)


class Localizer:
    """Matches query images against a map with a backend of the same model.

    Thread-safe for one caller of :meth:`localize` plus any number of :meth:`set_map` /
    :meth:`update_config` callers: a query works on the (map, settings) it started with, and
    a swap takes effect from the next query on.
    """

    def __init__(self, backend: DescriptorBackend, vpr_map: VprMap, cfg: LocalizerConfig,
                 verification: VerificationConfig | None = None, allow_empty: bool = False) -> None:
        """``allow_empty``: the map may be empty (a map builder's own map, which grows)."""
        from vpr_ros.verification.verifier import Verifier

        self.backend = backend
        self.cfg = cfg
        self.allow_empty = allow_empty
        self.verifier = Verifier(verification or VerificationConfig(features="none"))
        self.verifier.check_backend(backend)
        self._lock = threading.Lock()
        self._check(vpr_map)
        self.map = vpr_map
        self.loops = _loop_detector(cfg)
        self._history: collections.deque[np.ndarray] = collections.deque(maxlen=100)  # recent query descriptors

    def _check(self, vpr_map: VprMap) -> None:
        vpr_map.check_model(ModelIdentity.of_backend(self.backend), where="map")
        if len(vpr_map) == 0 and not self.allow_empty:
            raise MapError("map is empty: build it first (vpr_ros_build_map or the map_builder node)")

    @property
    def map_note(self) -> str:
        """Why the loaded map cannot be re-ranked or verified with these settings ('' if it can)."""
        return self.verifier.map_note(self.map.manifest.local_features)

    def set_map(self, vpr_map: VprMap) -> None:
        """Swap in another map (checked against the backend's model); the loop-closure streak restarts."""
        self._check(vpr_map)
        with self._lock:
            self.map = vpr_map
            self.loops.reset()
            self._history.clear()

    def update_config(self, cfg: LocalizerConfig, verification: VerificationConfig | None = None) -> None:
        """New settings (top_k, thresholds, loop-closure rules...) from the next query on."""
        from vpr_ros.verification.verifier import Verifier

        with self._lock:
            if verification is not None:
                verifier = Verifier(verification)
                verifier.check_backend(self.backend)
                self.verifier = verifier
            rules_changed = _rules(cfg) != _rules(self.cfg)
            self.cfg = cfg
            if rules_changed:
                published, last = self.loops.published, self.loops.last_published
                self.loops = _loop_detector(cfg)
                self.loops.published, self.loops.last_published = published, last

    def _sequence_score(self, vmap: VprMap, desc: np.ndarray, match: int, score: float, length: int) -> float:
        """Sequence matching (SeqSLAM): the cosines of this query with keyframe ``match`` and of the
        previous ``length - 1`` queries with the keyframes before it, along the diagonal, summed and
        divided by ``length`` (a diagonal that does not exist yet counts 0: a sequence is needed)."""
        total = score
        for k in range(1, length):
            if match - k < 0 or len(self._history) < k:
                break
            total += float(self._history[-k] @ vmap.descriptors(match - k, match - k + 1)[0])
        return total / length

    def describe(self, rgb: np.ndarray, local: bool = False) -> tuple[np.ndarray, dict[str, float], np.ndarray | None]:
        """One RGB image -> (descriptor [D], timings in ms, dense local features [P, C] if ``local``)."""
        t0 = time.perf_counter()
        x = preprocess(rgb, self.backend.input_size)[None]
        t1 = time.perf_counter()
        tokens = None
        if local:
            d, tokens = self.backend.infer_local(x)
            d, tokens = d[0], tokens[0]
        else:
            d = self.backend.infer(x)[0]
        t2 = time.perf_counter()
        return d, {"preprocess": (t1 - t0) * 1e3, "inference": (t2 - t1) * 1e3}, tokens

    def localize(self, rgb: np.ndarray, stamp: float, camera: str = "image",
                 intrinsics: "CameraIntrinsics | None" = None) -> LocalizationResult:
        """Match one frame taken at ``stamp`` (seconds) by ``camera`` (intrinsics from its CameraInfo)."""
        with self._lock:  # one consistent (map, settings, rules) for the whole query
            state = (self.map, self.cfg, self.loops, self.verifier)
        vmap, verifier = state[0], state[3]
        local = verifier.enabled and vmap.manifest.local_features == verifier.cfg.features
        desc, timings, tokens = self.describe(rgb, local=local and verifier.dense)
        query_features = None
        if local and (verifier.cfg.rerank != "none" or verifier.cfg.loop_closures == "geometric"):
            t1 = time.perf_counter()
            query_features = verifier.features(rgb, tokens)
            if query_features is not None:
                query_features.intrinsics = intrinsics
            timings["features"] = (time.perf_counter() - t1) * 1e3
        result = self._match(state, desc, query_features, stamp, camera, intrinsics, timings, None)
        if result is None:
            raise MapError(f"no map keyframe older than exclude_recent={state[1].exclude_recent}s "
                           f"before the query at {stamp:.3f}")
        return result

    def match(self, desc: np.ndarray, stamp: float, camera: str = "image",
              intrinsics: "CameraIntrinsics | None" = None, features: "LocalFeatures | None" = None,
              before: int | None = None) -> LocalizationResult | None:
        """Match a frame whose descriptor [D] (and local features, as stored for a keyframe) are
        computed already, against the keyframes with ids below ``before`` (all if None): a map
        builder closing loops on its own growing map. None when there is no keyframe to match."""
        with self._lock:
            state = (self.map, self.cfg, self.loops, self.verifier)
        return self._match(state, np.asarray(desc, np.float32).ravel(), features, stamp, camera, intrinsics,
                           {}, before)

    def _match(self, state: tuple, desc: np.ndarray, query_features: "LocalFeatures | None", stamp: float,
               camera: str, intrinsics: "CameraIntrinsics | None", timings: dict[str, float],
               before: int | None) -> LocalizationResult | None:
        vmap, cfg, loops, verifier = state
        vcfg = verifier.cfg
        local = verifier.enabled and vmap.manifest.local_features == vcfg.features
        if not local:
            query_features = None
        t0 = time.perf_counter()
        rerank = local and vcfg.rerank != "none"
        want = max(cfg.top_k, vcfg.rerank_top_k if rerank else 0)
        # with recent keyframes excluded, look further down the ranking to still fill the list
        k = want if cfg.exclude_recent <= 0 else min(len(vmap), max(64, 8 * want))
        scores, ids = vmap.search(desc[None], k, before=before)
        timings["search"] = (time.perf_counter() - t0) * 1e3
        kept = [(float(s), int(i)) for s, i in zip(scores[0], ids[0]) if i >= 0 and
                abs(vmap.keyframes[int(i)].stamp - stamp) >= cfg.exclude_recent][:want]
        if not kept:
            return None
        local_scores = [-1] * len(kept)
        if rerank and query_features is not None:
            t1 = time.perf_counter()
            n = min(vcfg.rerank_top_k, len(kept))
            for j in range(n):
                stored = vmap.local_features(kept[j][1])
                local_scores[j] = verifier.rerank_score(query_features, stored) if stored is not None else 0
            order = sorted(range(n), key=lambda j: (-local_scores[j], -kept[j][0])) + list(range(n, len(kept)))
            kept, local_scores = [kept[j] for j in order], [local_scores[j] for j in order]
            timings["rerank"] = (time.perf_counter() - t1) * 1e3
        matches = [Match(r, i, s, vmap.keyframes[i], ls)
                   for r, ((s, i), ls) in enumerate(zip(kept[: cfg.top_k], local_scores))]
        top = matches[0]
        accepted = top.score >= cfg.score_threshold

        memo: list = []

        def verify_top():  # type: ignore[no-untyped-def]
            """Geometric verification of the top match (once per query)."""
            from vpr_ros.verification.verifier import Verification

            if not memo:
                stored = vmap.local_features(top.db_id)
                if query_features is None or stored is None:
                    memo.append(Verification(False, "", 0, 0, "no local features for the query or the keyframe "
                                                              "(map built with verification.features: none?)"))
                else:
                    t2 = time.perf_counter()
                    memo.append(verifier.verify(query_features, stored))
                    timings["verify"] = (time.perf_counter() - t2) * 1e3
            return memo[0]

        # with a camera model, verify the accepted match for the pose too (metric with keyframe depth)
        v_pose = verify_top() if accepted and local and intrinsics is not None and query_features is not None else None

        # required whenever features are on; a map without matching features cannot provide it,
        # and then every closure is refused (with the reason)
        geometric = verifier.enabled and vcfg.loop_closures == "geometric"
        with self._lock:
            # a map swapped in during this query resets the streak: do not feed it a stale match
            current = vmap is self.map
            score = self._sequence_score(vmap, desc, top.db_id, top.score, cfg.sequence_length) \
                if cfg.temporal_filter == "sequence" and current else top.score
            loop = loops.update(stamp, top.keyframe.stamp, top.db_id, score,
                                verify_top if geometric else None) if current else None
            if current:
                self._history.append(np.asarray(desc, np.float32).ravel())
        pose = top.keyframe.pose if accepted else None
        covariance = pose_covariance(top.score, cfg.position_sigma)
        relative = rel_cov = None
        metric = False
        v = loop.verification if loop is not None and loop.verification is not None else v_pose
        if v is not None and v.verified and v.pose is not None:
            cam = tuple(cfg.camera_pose_in_base)
            relative = compose(compose(cam, v.pose), inverse(cam))  # query base in keyframe base frame
            Ad = adjoint(cam)
            rel_cov = Ad @ v.covariance @ Ad.T
            if v.metric:  # the robot's own pose, not just the keyframe's
                metric = True
                pose = compose(top.keyframe.pose, relative)
                Ad_k = adjoint(top.keyframe.pose)
                covariance = [float(c) for c in (Ad_k @ rel_cov @ Ad_k.T).ravel()]
        covariance = with_floor(covariance, cfg.min_position_sigma, cfg.min_orientation_sigma)
        return LocalizationResult(
            stamp=stamp, camera=camera, matches=matches, accepted=accepted, pose=pose,
            covariance=covariance, loop=loop, timings_ms=timings, relative=relative,
            relative_covariance=rel_cov, metric=metric and pose is not None)
