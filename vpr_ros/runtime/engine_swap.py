"""A backend that runs on a fallback while a TensorRT engine is built, then on the engine.

Building an engine takes minutes the first time (export, build, the accuracy gate); a node
should not wait for it. :class:`EngineSwap` answers at once on the next backend of ``auto``'s
order and builds the engine on a background thread (file-locked per cache key by the builder;
its phases in the log). When the build has passed the gate it is swapped in between two
batches and the fallback is closed; a failed build leaves the fallback in place, with the reason
in :attr:`build_status` (the nodes put it on ``/diagnostics``).
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable

import numpy as np

from vpr_ros.runtime.base import DescriptorBackend

log = logging.getLogger(__name__)


def same_identity(a: DescriptorBackend, b: DescriptorBackend) -> str:
    """'' when ``b`` computes the same descriptors' identity as ``a``, else what differs."""
    for key in ("model_id", "weights_sha256", "pca_id", "input_size", "descriptor_dim"):
        if getattr(a, key) != getattr(b, key):
            return f"{key} {getattr(b, key)!r} instead of {getattr(a, key)!r}"
    return ""


class _Progress(logging.Handler):
    """Hands each INFO line of the build's loggers to ``show``."""

    def __init__(self, show: Callable[[str], None]) -> None:
        super().__init__(logging.INFO)
        self._show = show

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._show(record.getMessage())
        except Exception:  # noqa: BLE001 - a status line must never break the build
            pass


class EngineSwap(DescriptorBackend):
    """Delegates to ``fallback`` until ``build()`` (run on a daemon thread) returns a backend of the
    same identity, then to that one. ``build`` must raise to report a failure."""

    def __init__(self, fallback: DescriptorBackend, build: Callable[[], DescriptorBackend], what: str) -> None:
        super().__init__(fallback.model_id, fallback.weights_sha256, fallback.weights_source,
                         fallback.input_size, fallback.descriptor_dim, fallback.pca_id)
        self._current = fallback
        self.name = fallback.name  # the backend in use
        self._lock = threading.Lock()  # held by a batch and by the swap: a batch never sees two backends
        self._closed = False
        self.swapped = threading.Event()  # set once the build has ended, swapped in or not
        self.build_status = f"building {what} in the background; running on '{fallback.name}' meanwhile"
        self.build_progress = ""  # the build's latest log line (export, TensorRT phases, gate)
        log.info("%s", self.build_status)
        self._thread = threading.Thread(target=self._build, args=(build, what), name="vpr-engine-build", daemon=True)
        self._thread.start()

    def _build(self, build: Callable[[], DescriptorBackend], what: str) -> None:
        building = self.build_status

        def show(line: str) -> None:
            self.build_progress = line
            self.build_status = f"{building}; {line}"
        progress = _Progress(show)
        watched = [logging.getLogger(name) for name in ("vpr_ros.export", "vpr_ros.runtime.factory")]
        for lg in watched:  # the export's and builder's progress lines (TensorRT phases) become the status
            lg.addHandler(progress)
        try:
            built = build()
        except Exception as exc:  # noqa: BLE001 - any failure keeps the fallback
            self.build_status = f"{what} failed, staying on '{self._current.name}': {exc}"
            log.warning("%s", self.build_status)
            self.swapped.set()
            return
        finally:
            for lg in watched:
                lg.removeHandler(progress)
        differs = same_identity(self._current, built)
        with self._lock:
            if self._closed or differs:
                old = built
            else:
                old, self._current = self._current, built
                self.name = built.name
                self.selection = f"{self.selection.split(' once ')[0]} (its engine was built in the background)"
        old.close()
        if self._closed:
            self.build_status = f"{what} finished after the backend was closed; not used"
        elif differs:
            self.build_status = f"{what} not used: it has {differs}"
            log.warning("%s", self.build_status)
        else:
            self.build_status = f"{what} passed the accuracy gate and runs now (was '{old.name}')"
            log.info("%s", self.build_status)
        self.swapped.set()

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            return self._current.infer(batch)

    @property
    def has_local(self) -> bool:
        return self._current.has_local

    def _infer_local(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            return self._current.infer_local(batch)

    def describe(self) -> dict[str, Any]:
        return {**self._current.describe(), "engine_build": self.build_status}

    def numerics(self) -> str:
        return self._current.numerics()

    def close(self) -> None:
        """Close the backend in use; an engine that finishes building later is closed at once."""
        with self._lock:
            self._closed = True
            self._current.close()
