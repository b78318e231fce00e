"""Newest-frame-per-camera hand-off between ROS callbacks and the inference thread.

When inference is slower than the cameras, only the newest frame of each camera is
kept (no unbounded queue); replaced frames are counted as dropped.
"""
from __future__ import annotations

import threading
from typing import Any


class LatestFrameSlots:
    """One slot per camera; ``put`` overwrites, ``take`` serves cameras round-robin."""

    def __init__(self) -> None:
        self._slots: dict[str, Any] = {}
        self._order: list[str] = []
        self._next = 0
        self._cv = threading.Condition()
        self._closed = False
        self.received = 0
        self.dropped = 0

    def put(self, camera: str, item: Any) -> None:
        """Store ``item`` as the newest frame of ``camera`` (dropping an unprocessed older one)."""
        with self._cv:
            self.received += 1
            if camera in self._slots:
                self.dropped += 1
            elif camera not in self._order:
                self._order.append(camera)
            self._slots[camera] = item
            self._cv.notify()

    def take(self, timeout: float | None = None) -> tuple[str, Any] | None:
        """Wait for a frame; returns (camera, item), or None on timeout or after close()."""
        with self._cv:
            if not self._cv.wait_for(lambda: self._slots or self._closed, timeout=timeout):
                return None
            if self._closed:
                return None
            for _ in range(len(self._order)):
                cam = self._order[self._next % len(self._order)]
                self._next += 1
                if cam in self._slots:
                    return cam, self._slots.pop(cam)
            return None  # pragma: no cover - unreachable: a slot was present

    def pending(self) -> int:
        with self._cv:
            return len(self._slots)

    def close(self) -> None:
        """Wake and stop every waiting ``take``."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
