"""Keyframe selection shared by the map_builder node and the offline builders."""
from __future__ import annotations

import math
from typing import Sequence

from vpr_ros.config import KeyframeConfig
from vpr_ros.geometry import rotation_angle, translation_distance


class KeyframeSelector:
    """Accept a frame when the robot moved ``min_distance`` m, turned ``min_rotation_deg``,
    or ``max_interval`` s passed since the last accepted frame (the first frame is accepted);
    optionally also when its appearance differs from the last keyframe (``novelty_threshold``,
    checked by the builder, which has the descriptors)."""

    def __init__(self, cfg: KeyframeConfig) -> None:
        self.cfg = cfg
        self._last: tuple[float, Sequence[float]] | None = None
        self._prev: tuple[float, Sequence[float]] | None = None

    def offer(self, stamp: float, pose: Sequence[float]) -> bool:
        """True if (stamp, pose) should become a keyframe; remembers it if so."""
        if self._last is None or self._is_new(stamp, pose):
            self.accept(stamp, pose)
            return True
        return False

    def accept(self, stamp: float, pose: Sequence[float]) -> None:
        """Record a keyframe taken for another reason (appearance novelty)."""
        self._prev, self._last = self._last, (stamp, tuple(pose))

    def undo(self) -> None:
        """Forget the keyframe just accepted (it could not be stored), so the next frame is
        measured from the one before."""
        self._last, self._prev = self._prev, None

    def is_novel(self, similarity_to_last: float) -> bool:
        """Appearance trigger: the frame looks unlike the last keyframe (if enabled)."""
        return 0.0 < self.cfg.novelty_threshold and similarity_to_last < self.cfg.novelty_threshold

    def _is_new(self, stamp: float, pose: Sequence[float]) -> bool:
        assert self._last is not None
        t0, p0 = self._last
        c = self.cfg
        if c.min_distance > 0 and translation_distance(p0, pose) >= c.min_distance:
            return True
        if c.min_rotation_deg > 0 and math.degrees(rotation_angle(p0, pose)) >= c.min_rotation_deg:
            return True
        return c.max_interval > 0 and stamp - t0 >= c.max_interval
