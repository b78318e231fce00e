"""A robot's own map, followed as a reader (no lock, never blocks the map builder that writes it):
the keyframes added since the last look, and any keyframe's stored local features on demand."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from vpr_ros.errors import MapError
from vpr_ros.mapping.map_store import ModelIdentity, read_manifest_file
from vpr_ros.mapping.store import database as db
from vpr_ros.mapping.store.map_types import Keyframe
from vpr_ros.verification.features import LocalFeatures


class MapFollower:
    """Follows the map directory ``map_dir`` (format 3) from keyframe ``first`` on."""

    def __init__(self, map_dir: str | Path, first: int = 0) -> None:
        self.root = Path(map_dir)
        self.next = int(first)
        self._store: Path | None = None
        self._con = None
        self._lock = threading.Lock()
        self.model: ModelIdentity | None = None

    def _open(self) -> None:
        _, d = read_manifest_file(self.root)
        if d["format_version"] == 1:
            raise MapError(f"{self.root}: a format-1 (v0.3) map: open it with a map builder once to migrate it")
        store = self.root / d["store"]
        if store != self._store:  # first look, or the map was replaced by a new one
            self.close()
            self._con, self._store = db.connect_ro(store), store

    def new_keyframes(self) -> tuple[list[Keyframe], np.ndarray]:
        """Keyframes added since the last call and their descriptors [n, D] float32 (checked)."""
        with self._lock:
            self._open()
            assert self._con is not None and self._store is not None
            manifest, kfs, vectors = db.read_new_keyframes(self._con, self._store, self.next)
            if self.model is not None and manifest.model != self.model:
                raise MapError(f"{self.root}: the map now holds another model's keyframes")
            self.model = manifest.model
            self.next += len(kfs)
            return kfs, vectors

    def features(self, i: int) -> LocalFeatures | None:
        """The stored local features of keyframe ``i`` (None if it has none)."""
        with self._lock:
            self._open()
            assert self._con is not None
            return db.read_features(self._con, threading.Lock(), i, str(self._store))

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None
            self._store = None
