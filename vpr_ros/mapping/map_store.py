"""A map: keyframes (pose, stamp, camera, descriptor, local features) in a durable store on disk,
searched through a faiss index in memory.

Directory layout (format 3)::

    manifest.yaml              format_version: 3 and the name of the store file (written once,
                               atomically; replaced only when a whole map is replaced)
    map-<id>.sqlite            the store (:mod:`vpr_ros.mapping.store.database`): metadata,
                               keyframes, descriptors (float16), local features, pending frames; every
                               row checksummed; WAL journal, every commit fsynced
    index-<id>-<n>.faiss       optional snapshot of a slow-to-build index (HNSW, IVF), sha256 in
                               the store; rebuilt from the stored descriptors when missing or bad
    writer.lock                held (flock) by the one process writing the map

:class:`VprMap` is the in-memory view. Three ways to get one:

* :meth:`VprMap.create` — a new map in memory; :meth:`VprMap.save` writes it (one transaction);
* :meth:`VprMap.load` — a reader's consistent snapshot (no lock; never sees half a change);
* :meth:`VprMap.open_writer` — the one writer of a directory (holds ``writer.lock``): with
  ``durable=True`` every :meth:`VprMap.add` is committed before it returns (the map builder
  node), with ``durable=False`` additions are committed together by :meth:`VprMap.save` (offline
  builds: all or nothing). Opening a format-1 (v0.3) or format-2 (v0.4) map for writing
  migrates it to format 3; readers read all three as they are.

No pickle anywhere.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import threading
import uuid
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import numpy as np
import yaml

from vpr_ros.errors import MapError
from vpr_ros.files import check_not_linked, read_regular_bytes
from vpr_ros.mapping.sessions import REFERENCE, UNALIGNED, SessionRecord
from vpr_ros.mapping.store import database as db
from vpr_ros.mapping.store import legacy
from vpr_ros.mapping.store.lock import WriterLock, lock_holder
from vpr_ros.mapping.store.vector_reads import PARALLEL_FROM, ParallelVectorReader
# the map's types live in store.map_types (imported by the store too); re-exported here for the map's users
from vpr_ros.mapping.store.map_types import (FORMAT_VERSION, PROBE_MIN_COSINE, Keyframe, Manifest,  # noqa: F401
                                             ModelIdentity, encode_probe, finite, probe_cosine)

if TYPE_CHECKING:
    from vpr_ros.config import IndexConfig
    from vpr_ros.mapping.store.pending import PendingFrame
    from vpr_ros.verification.features import LocalFeatures

log = logging.getLogger(__name__)

MANIFEST = "manifest.yaml"
READABLE_VERSIONS = (1, *db.STORE_VERSIONS)
MANIFEST_MAX_BYTES = 1 << 20  # a format-2/3 manifest is ~100 bytes, a format-1 one a few KB


# ---------------------------------------------------------------------------- manifest file
def read_manifest_file(root: Path) -> tuple[str, dict[str, Any]]:
    """(text, parsed mapping) of ``root/manifest.yaml``; its format version is supported."""
    path = root / MANIFEST
    try:
        data = read_regular_bytes(path, "the map manifest", MANIFEST_MAX_BYTES, MapError)
    except FileNotFoundError:
        raise MapError(f"{root}: not a map directory (no {MANIFEST})") from None
    except NotADirectoryError:
        raise MapError(f"{root}: not a map directory (not a folder)") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise MapError(f"{path}: not UTF-8 text (binary data or a corrupt file)") from None
    try:
        d = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise MapError(f"{path}: not valid YAML (truncated or corrupt?): {first}") from None
    if not isinstance(d, dict):
        raise MapError(f"{path}: manifest is not a mapping (truncated or not a vpr_ros manifest)")
    if "format_version" not in d:
        raise MapError(f"{path}: no format_version (truncated, or not a vpr_ros map manifest)")
    version = d["format_version"]
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        raise MapError(f"{path}: map format version {version!r} is not supported (this vpr_ros reads "
                       f"versions {', '.join(map(str, READABLE_VERSIONS))}); it was written by another "
                       "vpr_ros version and is left untouched")
    if version in db.STORE_VERSIONS:
        store = d.get("store")
        if set(d) - {"format_version", "store", "about"} or not isinstance(store, str) \
                or not store.startswith("map-") or not store.endswith(".sqlite") or "/" in store:
            raise MapError(f"{path}: a format-{version} manifest holds format_version, store (map-<id>.sqlite) and "
                           f"about; got {sorted(d)} with store {store!r}")
    return text, d


def _manifest_text(store: str) -> str:
    return yaml.safe_dump({"format_version": FORMAT_VERSION, "store": store,
                           "about": "a vpr_ros map: everything is in the store (vpr_ros_map_info prints it)"},
                          sort_keys=False)


def is_temporary(name: str) -> bool:
    """Files a killed writer can leave behind: temporaries of any kind."""
    return name.startswith(".") and ".tmp-" in name


# ---------------------------------------------------------------------------- the map
#: A writer opening a store up to this size reads all of it to check it (SQLite's quick_check, every
#: descriptor's and local feature's checksum: ~1 s per GiB when cached, several when not); a larger
#: one is checked as a reader checks it, so that a map builder on a million keyframes (33 GB at
#: 10752-d: 544 s for the full check) starts in seconds. Nothing a writer copies escapes the check:
#: every row it reads (re-ranking, a rebuild, a migration) is verified then.
FULL_CHECK_BYTES = 2 << 30


class VprMap:
    """Keyframe descriptors in a faiss inner-product index plus their metadata.

    Descriptors are L2-normalised, so scores are cosine similarities in [-1, 1].
    Keyframe ids are the ids the index returns on search (insertion order).
    """

    def __init__(self, manifest: Manifest, index: Any | None = None,
                 keyframes: list[Keyframe] | None = None) -> None:
        import faiss

        self.manifest = manifest
        self.index = index if index is not None else faiss.IndexFlatIP(manifest.model.descriptor_dim)
        self.keyframes: list[Keyframe] = keyframes or []
        self.notes: list[str] = []          # what a reader repaired or worked around
        self.pending = 0                    # accepted keyframes not yet encoded (at load)
        self.session_records: dict[int, SessionRecord] = {}  # alignment of each recording session (stored)
        self._sessions_stored: dict[int, SessionRecord] = {}  # what the store holds of them
        self.root: Path | None = None       # where it was loaded from / saved to
        self.writer: db.StoreWriter | None = None
        self.durable = False
        self._lock: WriterLock | None = None
        self._origin: tuple[str, int] | None = None  # (store_id or 'v1:<root>', generation) it equals on disk
        self._stored = 0                              # keyframes already in that store
        self._done_pending: list[int] = []            # pending frames encoded since the last save
        self._features: dict[int, "LocalFeatures"] = {}  # not yet stored
        self._db: sqlite3.Connection | None = None       # read-only, for stored local features
        self._db_v1 = False
        self._db_where = ""
        self._db_lock = threading.Lock()
        self._vector_reader: ParallelVectorReader | None = None  # re-ranking's reads, several in flight
        self._unsaved: list[np.ndarray] = []  # float16 rows of ids _stored.. (a compact index lacks them)
        from vpr_ros.config import IndexConfig

        self.search_cfg = IndexConfig()       # rerank_k of a compact index

    @classmethod
    def create(cls, model: ModelIdentity, map_frame: str = "map", source: str = "") -> "VprMap":
        """An empty map for ``model`` (in memory until saved)."""
        return cls(Manifest(model=model, map_frame=map_frame, source=source))

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def model(self) -> ModelIdentity:
        return self.manifest.model

    # ------------------------------------------------------------------ contents
    def add(self, descriptors: np.ndarray, keyframes: Sequence[Keyframe],
            features: "Sequence[LocalFeatures | None] | None" = None, done_pending: Iterable[int] = ()) -> list[int]:
        """Append descriptors [N, D] (L2-normalised) with their keyframes (and their local
        features, for verification); returns their ids. On a durable writer the keyframes are
        committed (and the pending frames ``done_pending`` they came from deleted) first."""
        d = np.ascontiguousarray(descriptors, dtype=np.float32)
        if d.ndim != 2 or d.shape[1] != self.model.descriptor_dim or d.shape[0] != len(keyframes):
            raise MapError(f"add: descriptors {list(d.shape)} do not match {len(keyframes)} keyframes "
                           f"of dimension {self.model.descriptor_dim}")
        if not np.isfinite(d).all():
            raise MapError("add: descriptors contain NaN or infinite values")
        if features is not None and len(features) != len(keyframes):
            raise MapError(f"add: {len(features)} feature sets for {len(keyframes)} keyframes")
        first = len(self)
        ids = list(range(first, first + len(keyframes)))
        new_feats: dict[int, "LocalFeatures"] = {}
        kind = self.manifest.local_features
        for k, i in enumerate(ids):
            f = features[k] if features is not None else None
            if f is not None:
                if kind and f.kind != kind:
                    raise MapError(f"add: '{f.kind}' features for a map of '{kind}' features")
                kind = f.kind
                new_feats[i] = f
        stored_d = db.as_stored(d)  # what the store keeps: a reader's index equals this one
        if self.writer is not None and self.durable:
            stored = [replace(kf, id=i) for kf, i in zip(keyframes, ids)]
            self.writer.commit(stored, stored_d, new_feats, done_pending, {"local_features": kind})
            self._stored += len(ids)
            new_feats = {}
        else:
            self._done_pending.extend(int(s) for s in done_pending)
            if self.reranks:  # the index keeps codes only: the exact vectors wait here for the store
                self._unsaved.append(stored_d.astype(db.VECTOR_DTYPE))
        self.index.add(stored_d)
        for kf, i in zip(keyframes, ids):
            kf.id = i
            self.keyframes.append(kf)
        self._features.update(new_feats)
        self.manifest.local_features = kind
        self.manifest.count = len(self)
        if self.writer is not None and self.durable:
            self._origin = (self.manifest.store_id, self.writer.generation)
            self.manifest.generation = self.writer.generation
        return ids

    def next_session(self) -> int:
        """The session number a new recording on this map gets (0 for an empty map)."""
        return max((k.session for k in self.keyframes), default=-1) + 1

    def sessions(self) -> dict[int, int]:
        """Session number -> keyframes."""
        out: dict[int, int] = {}
        for k in self.keyframes:
            out[k.session] = out.get(k.session, 0) + 1
        return out

    def update_poses(self, poses: dict[int, Sequence[float]], map_frame: str | None = None) -> None:
        """Move stored keyframes (id -> new pose x y z qx qy qz qw), e.g. to a SLAM back end's
        optimised trajectory, and optionally the frame they are in: durable on a writer (one
        commit), in memory otherwise."""
        moved = []
        for i, pose in poses.items():
            if not 0 <= int(i) < len(self.keyframes):
                raise MapError(f"update_poses: no keyframe {i} (the map has {len(self.keyframes)})")
            moved.append(replace(self.keyframes[int(i)], pose=tuple(float(v) for v in pose)))  # type: ignore[arg-type]
        frame = map_frame if map_frame is not None else self.manifest.map_frame
        if self.writer is not None:
            stored = [kf for kf in moved if kf.id < self._stored]
            self.writer.update_poses(stored, {"map_frame": frame})
            self._origin = (self.manifest.store_id, self.writer.generation)
            self.manifest.generation = self.writer.generation
        elif self._stored:
            raise MapError("update_poses: this map is a reader's copy; open it for writing (VprMap.open_writer)")
        for kf in moved:
            self.keyframes[kf.id] = kf
        self.manifest.map_frame = frame

    def set_session_record(self, session: int, record: SessionRecord) -> None:
        """Store how ``session`` is aligned with the map (at once on a durable writer, else with the
        next save)."""
        sessions = {**self.session_records, int(session): record}
        if self.writer is not None and self.durable:
            self.writer.set_meta({"sessions": {str(k): v.to_json() for k, v in sorted(sessions.items())}})
            self._origin = (self.manifest.store_id, self.writer.generation)
            self._sessions_stored = dict(sessions)
        self.session_records = sessions

    def _sessions_meta(self) -> dict[str, Any]:
        return {"sessions": {str(k): v.to_json() for k, v in sorted(self.session_records.items())}} if self.session_records else {}

    def session_record(self, session: int) -> SessionRecord:
        """The stored record of ``session``; session 0 of a map without records is its reference,
        any other session without one is unaligned (a map written before alignment was recorded)."""
        if session in self.session_records:
            return self.session_records[session]
        if session == 0:
            return SessionRecord(REFERENCE)
        return SessionRecord(UNALIGNED, "no alignment recorded (written before vpr_ros 0.5, or never attempted)")

    def set_map_frame(self, frame: str) -> None:
        """The frame of the keyframe poses (stored at once on a durable writer)."""
        if self.writer is not None and self.durable:
            self.writer.set_meta({"map_frame": frame})
            self._origin = (self.manifest.store_id, self.writer.generation)
        self.manifest.map_frame = frame

    def local_features(self, i: int) -> "LocalFeatures | None":
        """The stored local features of keyframe ``i`` (None if it has none); read on demand."""
        if i in self._features:
            return self._features[i]
        if self._db is None:
            return None
        if self._db_v1:
            with self._db_lock:
                return legacy.features_v1(self._db, i, self._db_where)
        return db.read_features(self._db, self._db_lock, i, self._db_where)

    def feature_stats(self) -> tuple[int, float]:
        """(keyframes with local features, mean bytes per keyframe)."""
        n, total = len(self._features), sum(f.nbytes for f in self._features.values())
        if self._db is not None:
            rows, size = db.feature_bytes(self._db, self._db_lock, self._db_where)
            n, total = n + rows, total + size
        return n, (total / n if n else 0.0)

    def all_features(self) -> dict[int, "LocalFeatures"]:
        """Every keyframe's local features (stored and not yet stored)."""
        out: dict[int, "LocalFeatures"] = {}
        for i in range(len(self)):
            f = self.local_features(i)
            if f is not None:
                out[i] = f
        return out

    @property
    def reranks(self) -> bool:
        """Whether the index holds codes only (compact), so that exact vectors come from the store."""
        from vpr_ros.mapping.index import kind_of

        return self.manifest.index_type == "compact" and kind_of(self.index) == "ivfpq"

    def descriptors(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Descriptors of ids start..stop-1 [n, D] float32 (exact for flat / HNSW / IVF and compact,
        whose vectors are read from the store; IVF-PQ gives its approximation); all by default."""
        from vpr_ros.mapping.index import all_vectors

        if not self.reranks:
            return all_vectors(self.index, start, stop)
        stop = len(self) if stop is None else min(stop, len(self))
        return self._vectors_of(range(start, max(start, stop)))

    def _vectors_of(self, ids: Iterable[int]) -> np.ndarray:
        """Exact vectors [len(ids), D] float32 of a compact map: stored ones read from the store
        (checksums verified), the others from memory."""
        ids = np.asarray(list(ids), np.int64)
        out = np.empty((len(ids), self.model.descriptor_dim), np.float32)
        old = ids < self._stored
        if old.any():
            if self._db is None:
                raise MapError("descriptors: this map's store is closed")
            stored = ids[old]
            if len(stored) >= PARALLEL_FROM and not (np.diff(stored) == 1).all():  # scattered: re-ranking
                if self._vector_reader is None:
                    self._vector_reader = ParallelVectorReader(self._db_where, self.model.descriptor_dim)
                out[old] = self._vector_reader.read(stored.tolist())
            else:
                out[old] = db.read_vectors(self._db, self._db_lock, stored.tolist(), self.model.descriptor_dim,
                                           self._db_where)
        if (~old).any():
            tail = np.concatenate(self._unsaved) if len(self._unsaved) > 1 else self._unsaved[0]
            self._unsaved = [tail]
            out[~old] = tail[ids[~old] - self._stored]
        return out

    def reindex(self, kind: str, cfg: "IndexConfig | None" = None) -> None:
        """Rebuild the search index as ``kind`` ('flat', 'hnsw', 'ivf', 'ivfpq', 'compact') from the
        stored vectors (a compact index reads them in chunks: never all in memory at once)."""
        from vpr_ros.config import IndexConfig
        from vpr_ros.mapping.index import build_compact, build_index, compact_min_count, vectors_by_id

        cfg = cfg or IndexConfig()
        n = len(self)
        if kind == "compact" and n < compact_min_count(n, self.model.descriptor_dim, cfg):
            # exact search until there are enough keyframes to train (the next save converts it)
            self.index, self._unsaved = build_index(self.descriptors(), "flat", cfg), []
        elif kind == "compact":
            unsaved = self.descriptors(self._stored, n).astype(db.VECTOR_DTYPE)
            old = self.index
            source = self._vectors_of if self.reranks else (lambda ids: vectors_by_id(old, ids))
            self.index = build_compact(source, n, self.model.descriptor_dim, cfg)
            self._unsaved = [unsaved]
        else:
            self.index, self._unsaved = build_index(self.descriptors(), kind, cfg), []
        self.manifest.index_type = kind
        self.search_cfg = cfg

    def search(self, queries: np.ndarray, k: int, before: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by cosine: queries [M, D] -> (scores [M, k'], ids [M, k']), k' = min(k, searched).
        ``before``: only keyframes with ids below it are searched (the index skips the others, so a
        robot's own recent keyframes cost nothing: ids follow time)."""
        from vpr_ros.mapping.index import search_params

        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.model.descriptor_dim:
            raise MapError(f"search: queries {list(q.shape)} do not have dimension {self.model.descriptor_dim}")
        n = len(self) if before is None else max(0, min(before, len(self)))
        k = min(k, n)
        if k == 0:
            return np.zeros((q.shape[0], 0), np.float32), np.zeros((q.shape[0], 0), np.int64)
        if self.reranks:
            return self._search_reranked(q, k, n)
        if n == len(self):
            return self.index.search(q, k)
        return self.index.search(q, k, params=search_params(self.index, n))  # type: ignore[call-overload]

    def _search_reranked(self, q: np.ndarray, k: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """A compact index's shortlist (``search_cfg.rerank_k`` per query, ids below ``n``)
        re-ranked by the exact cosine with the stored vectors; missing places are id -1, score -inf."""
        from vpr_ros.mapping.index import search_params

        short = min(n, max(k, self.search_cfg.rerank_k))
        params = search_params(self.index, n) if n < len(self) else None
        _, cand = self.index.search(q, short, params=params)  # type: ignore[call-overload]
        wanted = np.unique(cand[cand >= 0])
        vectors = self._vectors_of(wanted)
        # [candidates, queries]; einsum, not BLAS: BLAS threads waking while faiss's OpenMP threads
        # spin doubled the time of a whole search (measured: 9.2 ms -> 5.x ms at 30k x 10752)
        exact_all = np.einsum("cd,qd->cq", vectors, q)
        scores = np.full((len(q), k), -np.inf, np.float32)
        ids = np.full((len(q), k), -1, np.int64)
        for r in range(len(q)):
            c = cand[r][cand[r] >= 0]
            exact = exact_all[np.searchsorted(wanted, c), r]
            top = np.argsort(-exact, kind="stable")[:k]
            scores[r, :len(top)], ids[r, :len(top)] = exact[top], c[top]
        return scores, ids

    def cost(self) -> dict[str, Any]:
        """What the map costs: 'index' (kind searched in memory), 'memory_bytes' (estimated: the index
        and the keyframe table a node holds; the network, ROS and SQLite's page cache not included),
        'disk_bytes' (all its files) and both per keyframe."""
        from vpr_ros.mapping.index import kind_of, memory_estimate

        kind = "compact" if self.reranks else kind_of(self.index)
        n = len(self)
        memory = memory_estimate(kind, n, self.model.descriptor_dim, self.search_cfg)
        memory += sum(int(v.nbytes) for v in self._unsaved)
        disk = 0
        for f in self.files:
            try:
                disk += f.stat().st_size
            except OSError:
                pass  # a journal file checkpointed away meanwhile
        return {"index": kind, "memory_bytes": memory, "disk_bytes": disk,
                "memory_per_keyframe": memory / max(n, 1), "disk_per_keyframe": disk / max(n, 1)}

    def check_model(self, model: ModelIdentity, where: str = "map") -> None:
        """Raise MapError listing every difference if the map was built by another model."""
        diffs = self.model.differences(model)
        if diffs:
            raise MapError(f"{where} was built by another model: " + "; ".join(diffs))

    def poses(self) -> np.ndarray:
        """All keyframe poses as float64 [N, 7]."""
        return np.array([kf.pose for kf in self.keyframes], np.float64).reshape(-1, 7)

    @property
    def files(self) -> list[Path]:
        """The files on disk this map was read from or written to."""
        if self.root is None:
            return []
        if self.manifest.format_version == 1:
            return [self.root / MANIFEST, *(self.root / f for f in legacy.files_v1(self.manifest.generation))]
        store = self.root / f"map-{self.manifest.store_id}.sqlite"
        out = [self.root / MANIFEST, store, *[Path(f"{store}{s}") for s in ("-wal", "-shm")]]
        out += sorted(self.root.glob(f"index-{self.manifest.store_id}-*.faiss"))
        return [f for f in out if f.exists()]

    # ------------------------------------------------------------------ persistence
    def save(self, map_dir: str | Path | None = None, replace_existing: bool = False,
             lock: WriterLock | None = None) -> Path:
        """Write the map into ``map_dir`` (default: where it came from).

        A writer's own directory: commit what is not yet committed and snapshot a slow-to-build
        index. Otherwise, under the directory's writer lock: a new directory gets a new store; the
        map it was loaded from gets the keyframes added since (refused if another writer has
        changed it since: nothing newer is overwritten); any other map there is refused, unless
        ``replace_existing`` (then the new store replaces it in one manifest swap). ``lock``: the
        directory's writer lock when the caller holds it already (see :func:`hold_writer_lock`)."""
        root = Path(map_dir) if map_dir is not None else self.root
        if root is None:
            raise MapError("save: no map directory given")
        if self.writer is not None and self.root is not None and root.resolve() == self.root.resolve():
            self._flush()
            return root
        if self.writer is not None:
            raise MapError(f"save: this map is open for writing in {self.root}, not {root}")
        _make_dir(root)
        held = lock if lock is not None else WriterLock(root)
        try:
            held.verify()
            self._save_locked(root, replace_existing, held.verify)
        finally:
            if lock is None:
                held.release()
        return root

    def _save_locked(self, root: Path, replace_existing: bool, guard: Callable[[], None]) -> None:
        d = None
        if (root / MANIFEST).exists():  # a map that cannot be read is never replaced
            _, d = read_manifest_file(root)
            if replace_existing:
                VprMap.read_manifest(root)
        if d is None or replace_existing:
            self._write_new_store(root, old=d, guard=guard)
            return
        origin = self._origin
        if d["format_version"] == 1:
            old = legacy.manifest_v1(d, str(root / MANIFEST))
            if origin != (f"v1:{root.resolve()}", old.generation):
                raise MapError(f"{root} holds another map (or a newer save of this one); not overwritten "
                               "(extend it with --append / open_writer, or save elsewhere)")
            self._write_new_store(root, old=d, guard=guard)  # migrated by this first write
            _log_migrated(root, 1)
            return
        if d["format_version"] != FORMAT_VERSION:
            stored = db.read_meta(root / d["store"])
            if origin != (stored.store_id, stored.generation):
                raise MapError(f"{root} holds another map (or a newer save of this one); not overwritten "
                               "(extend it with --append / open_writer, or save elsewhere)")
            self._write_new_store(root, old=d, guard=guard)
            _log_migrated(root, d["format_version"])
            return
        writer = db.StoreWriter(root, root / d["store"])
        writer.guard = guard
        try:
            if origin is None or origin[0] != writer.manifest.store_id:
                raise MapError(f"{root} holds another map; not overwritten (extend it with --append / "
                               "open_writer, or save elsewhere)")
            if writer.generation != origin[1]:
                raise MapError(f"{root} has changed since this map was loaded (generation {writer.generation}, "
                               f"loaded at {origin[1]}: another writer added to it); not overwritten: reload it")
            self.writer, self.root = writer, root
            self._flush()
        finally:
            self.writer = None
            writer.close()

    def _flush(self) -> None:
        """Commit the keyframes added since the last commit, the metadata, and an index snapshot."""
        w = self.writer
        assert w is not None and self.root is not None
        n = len(self)
        meta = {"local_features": self.manifest.local_features, "map_frame": self.manifest.map_frame,
                "index_type": self.manifest.index_type}
        sessions = self._sessions_meta() if self.session_records != self._sessions_stored else {}
        if self._stored < n or self._done_pending:
            new, first = self.keyframes[self._stored:], self._stored
            feats = {i: f for i, f in self._features.items() if i >= self._stored}
            w.commit(new, lambda a, b: self.descriptors(first + a, first + b), feats, self._done_pending,
                     {**meta, **sessions})
        elif any(getattr(w.manifest, k) != v for k, v in meta.items()) or sessions:
            w.set_meta({**meta, **sessions})
        w.manifest = replace(w.manifest, local_features=self.manifest.local_features,
                             map_frame=self.manifest.map_frame, index_type=self.manifest.index_type)
        self._stored, self._done_pending, self._sessions_stored = n, [], dict(self.session_records)
        self._unsaved = []
        kind = self.manifest.index_type
        if kind == "compact":
            from vpr_ros.mapping.index import compact_min_count, compact_outgrown

            if not self.reranks and n >= compact_min_count(n, self.model.descriptor_dim, self.search_cfg):
                self.reindex("compact", self.search_cfg)  # enough keyframes to train it now
            elif self.reranks and compact_outgrown(self.index, n, self.search_cfg):
                log.info("retraining the compact index for %d keyframes (its cells were made for far fewer)", n)
                self.reindex("compact", self.search_cfg)
        entry = w.index_entry
        snapshot = kind != "flat" and (kind != "compact" or self.reranks)
        if snapshot and n and (entry is None or entry.get("count") != n or entry.get("kind") != kind):
            w.write_index(self.index, kind)
        self._features = {}
        self._origin = (self.manifest.store_id, w.generation)
        self.manifest.generation, self.manifest.count = w.generation, n
        w.reclaim_space()
        self._open_features(w.path)

    def _write_new_store(self, root: Path, old: dict[str, Any] | None,
                         guard: Callable[[], None] | None = None) -> None:
        """A new store file holding everything, swapped in by rewriting the manifest; the previous
        map's files are removed after the swap."""
        store_id = uuid.uuid4().hex[:12]
        name = f"map-{store_id}.sqlite"
        tmp = root / f".{name}.tmp-{os.getpid()}"
        manifest = replace(self.manifest, store_id=store_id, count=0, generation=0, format_version=FORMAT_VERSION)
        feats = self.all_features()
        keyframes = [replace(kf) for kf in self.keyframes]
        try:
            db.StoreWriter.create(tmp, manifest)
            w = db.StoreWriter(root, tmp)
            try:
                w.commit(keyframes, self.descriptors, feats, (), {"local_features": self.manifest.local_features,
                                                                  **self._sessions_meta()})
                if self.manifest.index_type != "flat" and len(self) and \
                        (self.manifest.index_type != "compact" or self.reranks):
                    w.write_index(self.index, self.manifest.index_type)
                w.con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                generation = w.generation
            finally:
                w.close()
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            if guard is not None:
                guard()  # the manifest swap is the commit: only while this process still holds the lock
            os.replace(tmp, root / name)
            db.write_file_atomic(root / MANIFEST, _manifest_text(name).encode())
        except (OSError, sqlite3.Error) as exc:
            raise db.sqlite_error(root, "cannot write the map", exc) from None
        finally:
            for f in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
                f.unlink(missing_ok=True)
        if old is not None:
            _remove_old_map(root, old, keep=name, keep_id=store_id)
        self.root = root
        self.manifest = replace(self.manifest, store_id=store_id, generation=generation, count=len(self),
                                format_version=FORMAT_VERSION)
        self._origin, self._stored, self._done_pending, self._features = (store_id, generation), len(self), [], {}
        self._unsaved = []
        self._sessions_stored = dict(self.session_records)
        self._open_features(root / name)

    def _open_features(self, store: Path) -> None:
        self._close_vector_reader()
        with self._db_lock:
            if self._db is not None:
                self._db.close()
            self._db = db.connect_ro(store)
            self._db_v1, self._db_where = False, str(store)

    def close(self) -> None:
        """Release the database handles and, for a writer, the directory's lock (additions not
        yet committed by :meth:`save` are dropped). The map stays usable for search, except a
        compact one (its re-ranking reads the store)."""
        self._close_vector_reader()
        with self._db_lock:
            if self._db is not None:
                self._db.close()
                self._db = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _close_vector_reader(self) -> None:
        if self._vector_reader is not None:
            self._vector_reader.close()
            self._vector_reader = None

    # ------------------------------------------------------------------ opening
    @staticmethod
    def read_manifest(map_dir: str | Path) -> Manifest:
        """Only the description of a map directory (quick validation before a full load)."""
        root = Path(map_dir)
        _, d = read_manifest_file(root)
        if d["format_version"] == 1:
            return legacy.manifest_v1(d, str(root / MANIFEST))
        return db.read_meta(root / d["store"])

    @classmethod
    def load(cls, map_dir: str | Path, expect: ModelIdentity | None = None, verify_features: bool = True,
             check_structure: bool = False, memory_budget_mb: int | None = None) -> "VprMap":
        """Load one consistent generation and validate every checksum; with ``expect``, refuse a
        map from another model; ``check_structure``: SQLite's quick_check too (see
        :func:`~vpr_ros.mapping.store.database.read_snapshot`). Needs no lock: a writer may be
        adding to the map meanwhile. ``memory_budget_mb``: see :func:`~vpr_ros.mapping.store.database.read_snapshot`."""
        root = Path(map_dir)
        while True:
            text, d = read_manifest_file(root)
            try:
                vmap = cls._read(root, d, verify_features, check_structure, memory_budget_mb)
                break
            except MapError:
                try:  # the map was replaced between reading the manifest and its files: read again
                    again, _ = read_manifest_file(root)
                except MapError:
                    raise
                if again == text:
                    raise
        if expect is not None:
            vmap.check_model(expect, where=str(root))
        for note in vmap.notes:
            log.warning("%s: %s", root, note)
        return vmap

    @classmethod
    def _read(cls, root: Path, d: dict[str, Any], verify_features: bool, check_structure: bool = False,
              budget_mb: int | None = None) -> "VprMap":
        if d["format_version"] == 1:
            manifest = legacy.manifest_v1(d, str(root / MANIFEST))
            index, keyframes, kf_path = legacy.load_v1(root, manifest)
            from vpr_ros.config import IndexConfig
            from vpr_ros.mapping.index import set_search_params

            set_search_params(index, IndexConfig())
            vmap = cls(manifest, index, keyframes)
            con = db.connect_ro(kf_path)
            try:
                has = legacy.has_features_table(con, kf_path)
            except MapError:
                con.close()
                raise
            if has:
                vmap._db, vmap._db_v1, vmap._db_where = con, True, str(kf_path)
            else:
                con.close()
            vmap._origin = (f"v1:{root.resolve()}", manifest.generation)
        else:
            store = root / d["store"]
            if not check_not_linked(store, "the map store", MapError):
                raise MapError(f"{store}: the store named by the manifest is missing")
            con = db.connect_ro(store)
            try:
                snap = db.read_snapshot(root, store, verify_features, con=con, check_structure=check_structure,
                                        budget_mb=budget_mb)
            except BaseException:
                con.close()
                raise
            vmap = cls(snap.manifest, snap.index, snap.keyframes)
            vmap.notes, vmap.pending, vmap.session_records = snap.notes, snap.pending, snap.sessions
            vmap._sessions_stored = dict(snap.sessions)
            vmap._db, vmap._db_where = con, str(store)
            vmap._origin = (snap.manifest.store_id, snap.manifest.generation)
        vmap.root, vmap._stored = root, len(vmap)
        return vmap

    @classmethod
    def open_writer(cls, map_dir: str | Path, model: ModelIdentity | None = None, map_frame: str = "map",
                    source: str = "", durable: bool = True) -> "VprMap":
        """The one writer of ``map_dir``: takes its lock (refused, naming the holder, if another
        process has it), finishes what a killed writer left (temporaries), migrates a format-1
        map, or creates an empty map when there is none and ``model`` is given. A map that cannot
        be read is refused, never replaced; one of another ``model`` too."""
        root = Path(map_dir)
        _make_dir(root)
        lock = WriterLock(root)
        try:
            vmap = cls._open_locked(root, model, map_frame, source, lock.verify)
        except BaseException:
            lock.release()
            raise
        vmap._lock, vmap.durable = lock, durable
        if vmap.writer is not None:
            vmap.writer.guard = lock.verify
        return vmap

    @classmethod
    def _open_locked(cls, root: Path, model: ModelIdentity | None, map_frame: str, source: str,
                     guard: Callable[[], None]) -> "VprMap":
        for f in root.iterdir():
            if is_temporary(f.name) and f.is_file():
                f.unlink(missing_ok=True)  # only the lock holder writes temporaries: these are a dead writer's
        if not (root / MANIFEST).exists():
            if model is None:
                raise MapError(f"{root}: not a map directory (no {MANIFEST}) and no model to create one")
            fresh = cls.create(model, map_frame=map_frame, source=source)
            fresh._write_new_store(root, old=None, guard=guard)
            fresh.close()
        _, d = read_manifest_file(root)
        if d["format_version"] != FORMAT_VERSION:  # an older format: rewritten as this one first
            old = cls._read(root, d, verify_features=True, check_structure=d["format_version"] != 1)
            if model is not None:
                old.check_model(model, where=str(root))
            old._write_new_store(root, old=d, guard=guard)
            old.close()
            _log_migrated(root, d["format_version"])
            _, d = read_manifest_file(root)
        _remove_orphans(root, d["store"])
        store = root / d["store"]
        if not check_not_linked(store, "the map store", MapError):
            raise MapError(f"{store}: the store named by the manifest is missing")
        writer = db.StoreWriter(root, store)
        try:
            size = store.stat().st_size
            full = size <= FULL_CHECK_BYTES  # every checksum and SQLite's quick_check: the whole file read
            vmap = cls._read(root, d, verify_features=full, check_structure=full)
            if not full:
                vmap.notes.append(
                    f"{size / 2**30:.1f} GiB store: checked what opening reads (keyframes, the index snapshot, the "
                    "descriptors after it); every other row is checked when it is read. Run vpr_ros_map_info "
                    f"{root} for the full check")
                log.info("%s: %s", root, vmap.notes[-1])
            if model is not None:
                vmap.check_model(model, where=str(root))
        except BaseException:
            writer.close()
            raise
        vmap.writer = writer
        vmap._origin = (writer.manifest.store_id, writer.generation)
        return vmap

    # ------------------------------------------------------------------ pending frames (writers)
    def _writer(self) -> db.StoreWriter:
        if self.writer is None:
            raise MapError("this map is not open for writing (VprMap.open_writer)")
        return self.writer

    def add_pending(self, frame: "PendingFrame") -> int:
        """Store an accepted keyframe's raw data durably before it is encoded; returns its number."""
        return self._writer().add_pending(frame)

    def pending_frames(self) -> list[int]:
        """Numbers of the accepted keyframes still waiting for the encoder (oldest first)."""
        return self._writer().pending_seqs()

    def read_pending(self, seq: int) -> "PendingFrame":
        return self._writer().read_pending(seq)

    def drop_pending(self, seq: int) -> None:
        self._writer().drop_pending(seq)


_RELEASES = {1: "vpr_ros v0.3", 2: "vpr_ros v0.4"}


def _log_migrated(root: Path, version: int) -> None:
    log.info("%s: migrated from map format %d (%s) to format %d", root, version, _RELEASES.get(version, "?"),
             FORMAT_VERSION)


def _remove_old_map(root: Path, old: dict[str, Any], keep: str, keep_id: str) -> None:
    """After a manifest swap: the replaced map's files (format 1 generations or a SQLite store)."""
    for f in root.iterdir():
        n = f.name
        if n == keep or n.startswith(f"index-{keep_id}-") or not f.is_file():
            continue
        if (n.startswith(("index.", "keyframes.")) and old.get("format_version") == 1) or \
                (old.get("format_version") in db.STORE_VERSIONS and (n.startswith(str(old.get("store"))) or
                                                                  n.startswith("index-"))):
            f.unlink(missing_ok=True)


def _remove_orphans(root: Path, current: str) -> None:
    """Stores and snapshots no manifest names (a writer killed before or after its manifest swap)."""
    current_id = current[len("map-"):-len(".sqlite")]
    for f in root.iterdir():
        n = f.name
        if not f.is_file():
            continue
        if (n.startswith("map-") and not n.startswith(current)) or \
                (n.startswith("index-") and not n.startswith(f"index-{current_id}-")):
            f.unlink(missing_ok=True)


def hold_writer_lock(map_dir: str | Path) -> WriterLock:
    """Take ``map_dir``'s writer lock for a longer job (an offline build that saves at its end);
    MapError naming the holder if another process writes the map. Creates the directory."""
    root = Path(map_dir)
    _make_dir(root)
    return WriterLock(root)


def _make_dir(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MapError(f"{root}: cannot create the map directory ({exc.strerror or exc})") from None


def writer_holder(map_dir: str | Path) -> str:
    """Who writes ``map_dir`` now ('' if nobody)."""
    return lock_holder(Path(map_dir))
