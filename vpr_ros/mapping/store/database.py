"""The map database (format 3): one SQLite file in WAL mode, the map's source of truth.

Tables (every row carries ``crc``, :func:`~vpr_ros.mapping.store.records.row_crc` of its values)::

    meta            key -> JSON value: format_version, store_id, model, map_frame, source, metric,
                    created, local_features, index_type, index (snapshot file, kind, count, sha256),
                    count (keyframes), generation (committed changes)
    keyframes       id, stamp, camera, frame_id, pose, GPS, image_ref, session
    vectors         id, descriptor (float16, 2 bytes per dimension: 21.5 KB for 10752 values);
                    read in full only where the index needs every vector (exact/HNSW/IVF built
                    at load), else row by row (the top candidates of a compressed index)
    local_features  id, kind, size, keypoints, descriptors, 3-D points, intrinsics
    pending         seq, header (keyframe + image fields, JSON), image bytes, depth bytes

Format 2 (vpr_ros v0.4) kept the descriptor (float32) and its own CRC32 in the keyframe row; it is
read as it is and rewritten as format 3 by its first writer (:func:`is_current`).

Writes: one transaction per change, ``synchronous=FULL`` (a commit is on disk when it returns),
so a kill or power cut keeps every committed row. Reads: one read transaction per snapshot, so a
reader sees one generation, never a half-applied change, and never waits for the writer (WAL).
The faiss index is derived data: an optional snapshot file for the index kinds that are slow to
build (HNSW, IVF, compact), checked by sha256 and extended with the keyframes added after it; it
is rebuilt from the stored descriptors whenever it is missing, stale or corrupt.
"""
from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import math
import os
import sqlite3
import sys
import threading
import uuid
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from vpr_ros.errors import DamagedPending, MapError
from vpr_ros.files import check_not_linked, open_regular, replaced_atomically
from vpr_ros.files import fsync_dir as files_fsync_dir
from vpr_ros.mapping.store.pending import PendingFrame
from vpr_ros.mapping.sessions import SessionRecord
from vpr_ros.mapping.store.map_types import FORMAT_VERSION, Keyframe, Manifest
from vpr_ros.mapping.store.records import keyframe_crc, row_crc, vector_crc

if TYPE_CHECKING:
    from vpr_ros.verification.features import LocalFeatures


KEYFRAME_COLUMNS = ("id", "stamp", "camera", "frame_id", "x", "y", "z", "qx", "qy", "qz", "qw",
                    "lat", "lon", "alt", "image_ref", "session")
_KF_META = len(KEYFRAME_COLUMNS)  # format 2 rows go on with its descriptor and the descriptor's CRC32
VECTOR_DTYPE = np.float16  # stored descriptors: unit vectors lose < 1e-3 of a cosine
FEATURE_COLUMNS = ("id", "kind", "width", "height", "n", "dim", "dtype", "keypoints", "descriptors", "points3d",
                   "intrinsics")
FEATURE_DTYPES = {"uint8": np.uint8, "float32": np.float32, "float16": np.float16}

_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL, crc INTEGER NOT NULL)",
    "CREATE TABLE keyframes (id INTEGER PRIMARY KEY, stamp REAL NOT NULL, camera TEXT NOT NULL, "
    "frame_id TEXT NOT NULL, x REAL NOT NULL, y REAL NOT NULL, z REAL NOT NULL, qx REAL NOT NULL, "
    "qy REAL NOT NULL, qz REAL NOT NULL, qw REAL NOT NULL, lat REAL, lon REAL, alt REAL, "
    "image_ref TEXT NOT NULL, session INTEGER NOT NULL, crc INTEGER NOT NULL)",
    "CREATE TABLE vectors (id INTEGER PRIMARY KEY, descriptor BLOB NOT NULL, crc INTEGER NOT NULL)",
    "CREATE TABLE local_features (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, width INTEGER NOT NULL, "
    "height INTEGER NOT NULL, n INTEGER NOT NULL, dim INTEGER NOT NULL, dtype TEXT NOT NULL, "
    "keypoints BLOB NOT NULL, descriptors BLOB NOT NULL, points3d BLOB, intrinsics BLOB, crc INTEGER NOT NULL)",
    "CREATE TABLE pending (seq INTEGER PRIMARY KEY AUTOINCREMENT, header TEXT NOT NULL, image BLOB NOT NULL, "
    "depth BLOB, crc INTEGER NOT NULL)",
)
def page_size_for(dim: int) -> int:
    """Page size (bytes) of a new store for ``dim``-value descriptors: the smallest power of two
    from 4 KiB to 64 KiB (SQLite's largest) that holds three stored descriptors, so that reading one
    is one random read of one page. A 10752-d float16 descriptor (21 KiB) on 4 KiB pages spans six
    overflow pages read one after another (64 scattered descriptors, file not cached: 22 ms on 4 KiB
    pages, 8.6 ms on 64 KiB); a 512-d one (1 KiB) on 64 KiB pages would read 64 KiB to use 1."""
    need = 3 * (dim * np.dtype(VECTOR_DTYPE).itemsize + 64)  # three rows with their cell headers
    return int(min(65536, max(4096, 1 << (need - 1).bit_length())))


STORE_VERSIONS = (2, FORMAT_VERSION)  # SQLite stores: v0.4's and this one
_META_KEYS = ("format_version", "store_id", "model", "map_frame", "source", "metric", "created", "local_features",
              "index_type", "index", "count", "generation")


def sqlite_error(path: Path, what: str, exc: BaseException) -> MapError:
    """An sqlite3 / OS error as the package's MapError naming ``path``."""
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return MapError(f"{path}: {what} ({text})")


# ---------------------------------------------------------------------------- connections
def check_store_files(path: Path) -> None:
    """SQLite opens its files by name and follows links: the store and its journal files must be
    regular files, not links (a link would let a write land in another file), FIFOs or devices
    (an open or a read would block forever). MapError naming the file otherwise."""
    check_not_linked(path, "the map store", MapError)
    for suffix, what in (("-wal", "the store's journal"), ("-shm", "the store's shared-memory file")):
        check_not_linked(Path(f"{path}{suffix}"), what, MapError)


def connect_rw(path: Path, new: bool = False, page_size: int = 4096) -> sqlite3.Connection:
    """The writer's connection: WAL journal, every commit fsynced, explicit transactions. A ``new``
    database gets ``page_size`` and incremental auto-vacuum (set before anything else is written)."""
    check_store_files(path)
    try:
        con = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        if new:  # set before anything is written: they are fixed when the file is created
            con.execute(f"PRAGMA page_size={int(page_size)}")
            # the space of encoded pending images can go back to the file system
            con.execute("PRAGMA auto_vacuum=INCREMENTAL")
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")
        con.execute("PRAGMA journal_size_limit=67108864")  # the journal file shrinks back after a burst
        con.execute("PRAGMA busy_timeout=60000")  # another connection's checkpoint, not a correctness limit
        return con
    except sqlite3.Error as exc:
        raise sqlite_error(path, "cannot open the map database for writing", exc) from None


def connect_ro(path: Path) -> sqlite3.Connection:
    """A reader's connection (read-only; a directory nobody can write is opened as immutable).
    ``as_uri()`` percent-encodes '#', '?' and '%', which would otherwise cut the name short."""
    check_store_files(path)
    uri = Path(path).resolve().as_uri()
    try:
        con = sqlite3.connect(f"{uri}?mode=ro", uri=True, check_same_thread=False, isolation_level=None)
        con.execute("PRAGMA busy_timeout=60000")
        con.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        return con
    except sqlite3.Error as exc:
        wal = Path(f"{path}-wal")
        if not os.access(Path(path).parent, os.W_OK) and not wal.exists():
            try:  # read-only media: WAL readers need a -shm file they cannot create there
                return sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, check_same_thread=False,
                                       isolation_level=None)
            except sqlite3.Error:
                pass
        raise sqlite_error(path, "cannot open the map database", exc) from None


# ---------------------------------------------------------------------------- rows
def keyframe_meta(kf: "Keyframe") -> tuple:
    """The keyframe columns before the descriptor."""
    gps = kf.gps if kf.gps else (None, None, None)
    return (int(kf.id), float(kf.stamp), kf.camera, kf.frame_id, *(float(v) for v in kf.pose),
            *(None if v is None else float(v) for v in gps), kf.image_ref, int(kf.session))


def keyframe_row(kf: "Keyframe") -> tuple:
    meta = keyframe_meta(kf)
    return (*meta, row_crc(meta))


def vector_row(i: int, descriptor: np.ndarray) -> tuple:
    """(id, float16 bytes, crc) of a descriptor [D]."""
    blob = np.ascontiguousarray(descriptor, VECTOR_DTYPE).tobytes()
    return (int(i), blob, row_crc((int(i), blob)))


def as_stored(descriptors: np.ndarray) -> np.ndarray:
    """Descriptors [N, D] float32 rounded to what the store keeps (float16), so that the index a
    writer grows equals the one a reader builds from the store; MapError when a value does not fit
    float16 (descriptors are unit vectors: every value is in [-1, 1])."""
    x = np.asarray(descriptors, np.float32)
    with np.errstate(over="ignore"):
        y = x.astype(VECTOR_DTYPE)
    if not np.isfinite(y).all():
        raise MapError("add: descriptor values beyond float16's range (descriptors must be L2-normalised)")
    return y.astype(np.float32)


def is_current(path: Path, version: int) -> bool:
    """Whether a store of format ``version`` is written as it is (else its writer rewrites it)."""
    return version == FORMAT_VERSION


def features_row(i: int, f: "LocalFeatures") -> tuple:
    values = (int(i), f.kind, int(f.image_size[0]), int(f.image_size[1]), len(f), int(f.descriptors.shape[1]),
              str(f.descriptors.dtype), np.ascontiguousarray(f.keypoints, np.float32).tobytes(),
              np.ascontiguousarray(f.descriptors).tobytes(),
              None if f.points3d is None else np.ascontiguousarray(f.points3d, np.float32).tobytes(),
              None if f.intrinsics is None else f.intrinsics.as_array().tobytes())
    return (*values, row_crc(values))


def features_from_row(row: Sequence[Any], where: str) -> "LocalFeatures":
    """LocalFeatures of a stored row (with or without its trailing crc); MapError names ``where``."""
    from vpr_ros.verification.features import CameraIntrinsics, LocalFeatures

    _, kind, w, h, n, dim, dtype, kp, desc, pts, intr = row[:11]
    try:
        if not isinstance(kind, str) or not all(isinstance(v, int) and v >= 0 for v in (w, h, n, dim)):
            raise ValueError(f"kind {kind!r}, size {w!r}x{h!r}, n {n!r}, dim {dim!r}")
        dt = FEATURE_DTYPES[dtype]
        keypoints = np.frombuffer(kp, np.float32).reshape(n, 2)
        descriptors = np.frombuffer(desc, dt).reshape(n, dim)
        points3d = None if pts is None else np.frombuffer(pts, np.float32).reshape(n, 3)
        intrinsics = None if intr is None else CameraIntrinsics.from_array(np.frombuffer(intr, np.float64))
        return LocalFeatures(str(kind), keypoints, descriptors, (int(w), int(h)), points3d, intrinsics)
    except (KeyError, ValueError, TypeError, OverflowError) as exc:
        raise MapError(f"{where}: stored local features are corrupt ({type(exc).__name__}: {exc})") from None


def _check_crc(row: Sequence[Any], path: Path, what: str) -> None:
    try:
        ok = row_crc(row[:-1]) == row[-1]
    except (TypeError, UnicodeEncodeError):
        ok = False
    if not ok:
        raise MapError(f"{path}: {what} fails its checksum (the file is corrupt; restore it from a copy, "
                       "or remove the map and rebuild it)")


# ---------------------------------------------------------------------------- meta
def _meta_value(con: sqlite3.Connection, path: Path) -> dict[str, Any]:
    rows = con.execute("SELECT key, value, crc FROM meta").fetchall()
    meta: dict[str, Any] = {}
    for row in rows:
        key = row[0]
        _check_crc(row, path, f"map metadata '{key}'")
        try:
            meta[key] = json.loads(row[1])
        except ValueError:
            raise MapError(f"{path}: map metadata '{key}' is not JSON") from None
    missing = [k for k in _META_KEYS if k not in meta]
    if missing:
        raise MapError(f"{path}: map metadata lacks {missing} (not a vpr_ros map database, or a damaged one)")
    return meta


def manifest_of(meta: dict[str, Any], path: Path) -> "Manifest":
    """The validated Manifest of a metadata dict (every problem a MapError naming ``path``)."""

    version = meta["format_version"]
    if version not in STORE_VERSIONS or isinstance(version, bool):
        raise MapError(f"{path}: map format version {version!r} is not supported "
                       f"(this vpr_ros reads versions 1 to {FORMAT_VERSION})")
    fields = {k: meta[k] for k in ("map_frame", "source", "metric", "created", "local_features", "index_type",
                                   "count", "generation", "store_id")}
    return Manifest.from_fields(meta["model"], fields, str(path), format_version=version)


def _put_meta(con: sqlite3.Connection, values: dict[str, Any]) -> None:
    rows = []
    for k, v in values.items():
        text = json.dumps(v, allow_nan=False, sort_keys=True)
        rows.append((k, text, row_crc((k, text))))
    con.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?, ?)", rows)


def manifest_meta(m: "Manifest") -> dict[str, Any]:
    """The metadata rows describing ``m`` (without the index snapshot entry)."""
    from dataclasses import asdict

    model = asdict(m.model)
    model["mean"], model["std"] = list(m.model.mean), list(m.model.std)
    return {"format_version": FORMAT_VERSION, "store_id": m.store_id, "model": model, "map_frame": m.map_frame,
            "source": m.source, "metric": m.metric, "created": m.created, "local_features": m.local_features,
            "index_type": m.index_type, "count": m.count, "generation": m.generation}


# ---------------------------------------------------------------------------- reading
@dataclass
class Snapshot:
    """One consistent generation of a map database, read in one transaction, with its search
    index (from the index snapshot file when that is valid, extended with the keyframes after it;
    else built from the stored descriptors, which are the source of truth)."""

    path: Path
    manifest: "Manifest"
    keyframes: list["Keyframe"]
    index: Any
    pending: int
    features: int                        # keyframes with local features (all verified when asked; else -1)
    notes: list[str] = field(default_factory=list)
    sessions: dict[int, SessionRecord] = field(default_factory=dict)  # alignment per session (meta 'sessions')


def read_meta(path: Path) -> "Manifest":
    """Only the metadata (a quick check before a full load)."""
    con = connect_ro(path)
    try:
        return manifest_of(_meta_value(con, path), path)
    except sqlite3.Error as exc:
        raise sqlite_error(path, "cannot read the map database", exc) from None
    except UnicodeDecodeError:
        raise MapError(f"{path}: holds text that is not UTF-8 (a corrupt file)") from None
    finally:
        con.close()


def read_snapshot(root: Path, path: Path, verify_features: bool = True,
                  con: sqlite3.Connection | None = None, check_structure: bool = False,
                  budget_mb: int | None = None) -> Snapshot:
    """Read every keyframe of one generation and the descriptors its index snapshot lacks, checking
    every checksum read (and, with ``verify_features``, every stored local-feature row), and make its
    search index. Memory: the index, plus the descriptors its snapshot file lacks while reading.
    ``check_structure`` adds SQLite's quick_check and the checksums of the descriptors the snapshot
    covers (one more pass over the file): for a writer, whose next commit must not land in a damaged
    page list nor carry a damaged vector into a migration or a rebuilt index, and for
    vpr_ros_map_info. A reader's start-up reads only what it uses; a vector it reads later (an
    index rebuild, re-ranking) is checked then. ``budget_mb``: a reader's memory budget; a map
    whose stored index kind would exceed it is searched through a compact index built from the
    store instead (format 3; noted)."""
    own = con is None
    con = con or connect_ro(path)
    try:
        con.execute("BEGIN")  # one snapshot for everything below
        try:
            return _read(con, root, path, verify_features, check_structure, budget_mb)
        finally:
            con.execute("ROLLBACK")
    except sqlite3.Error as exc:
        raise sqlite_error(path, "cannot read the map database", exc) from None
    except UnicodeDecodeError:
        raise MapError(f"{path}: holds text that is not UTF-8 (a corrupt file)") from None
    finally:
        if own:
            con.close()


def _read(con: sqlite3.Connection, root: Path, path: Path, verify_features: bool, check_structure: bool,
          budget_mb: int | None = None) -> Snapshot:
    meta = _meta_value(con, path)
    manifest = manifest_of(meta, path)
    over = _over_budget(manifest, budget_mb)
    if over:
        meta = {**meta, "index": None}
        manifest = replace(manifest, index_type="compact")
    if check_structure:
        check = con.execute("PRAGMA quick_check").fetchall()
        if check != [("ok",)]:
            raise MapError(f"{path}: the database structure is damaged "
                           f"({'; '.join(str(r[0]) for r in check[:3])})")
    entry = meta["index"] if isinstance(meta["index"], dict) else None
    kind, notes = manifest.index_type, []
    index = None
    if kind != "flat" and entry is not None:
        index, why = _index_from_file(root, entry, kind, manifest)
        if index is None:
            notes.append(f"index snapshot {entry.get('file')!r} {why}: rebuilt the '{kind}' index from the "
                         "stored descriptors")
    first = int(index.ntotal) if index is not None else 0  # type: ignore[attr-defined]
    v2 = manifest.format_version == 2  # float32 vectors in the keyframe rows: read with them
    keyframes, tail = _read_keyframes(con, path, manifest, first if v2 else manifest.count)
    if check_structure and manifest.format_version != 2:
        for a in range(0, first, 4096):  # checked, not kept (the snapshot holds them)
            read_vectors(con, None, range(a, min(first, a + 4096)), manifest.model.descriptor_dim, path)
    features = 0
    if verify_features:
        cur = con.execute(f"SELECT {','.join(FEATURE_COLUMNS)}, crc FROM local_features ORDER BY id")
        for row in _rows(cur):
            _check_crc(row, path, f"local features of keyframe {row[0]!r}")
            if not (isinstance(row[0], int) and 0 <= row[0] < len(keyframes)):
                raise MapError(f"{path}: local features of a keyframe the map does not hold (id {row[0]!r})")
            features_from_row(row, f"{path}: keyframe {row[0]}")
            features += 1
    else:  # not counted: COUNT(*) walks every row's page (a million feature rows: a minute at start-up)
        features = -1
    pending = int(con.execute("SELECT COUNT(*) FROM pending").fetchone()[0])
    if kind == "compact" and not v2:
        index = _complete_compact(con, path, manifest, index, entry, notes)
    else:
        dim = manifest.model.descriptor_dim

        def source(ids: Iterable[int]) -> np.ndarray:
            if v2:
                return tail[np.asarray(list(ids), np.int64) - first]
            return read_vectors(con, None, ids, dim, path)

        index = _complete_index(index, source, first, kind, entry, len(keyframes), dim, notes)
    return Snapshot(path, manifest, keyframes, index, pending, features, [*over, *notes], sessions_of(meta, path))


def _over_budget(manifest: "Manifest", budget_mb: int | None) -> list[str]:
    """[why] when a reader with ``budget_mb`` should search ``manifest``'s map through a compact
    index instead of its stored kind (which would exceed the budget), else []."""
    from vpr_ros.config import IndexConfig
    from vpr_ros.mapping.index import compact_min_count, faiss_kind, memory_estimate

    kind, n, dim = manifest.index_type, manifest.count, manifest.model.descriptor_dim
    if budget_mb is None or kind == "compact" or manifest.format_version == 2:
        return []
    cfg = IndexConfig()
    need = memory_estimate(faiss_kind(kind), n, dim, cfg)
    if need <= budget_mb << 20 or n < compact_min_count(n, dim, cfg):
        return []
    return [f"its '{kind}' index would take {need / 2**20:.0f} MiB, more than memory_budget_mb {budget_mb}: "
            "searching a compact index built from the store at load instead (re-save the map with the map "
            "builder's index.memory_budget_mb to store one)"]


def sessions_of(meta: dict[str, Any], path: Path) -> dict[int, SessionRecord]:
    """The per-session alignment records of the metadata ('sessions'; maps before v0.5 have none)."""
    raw = meta.get("sessions") or {}
    if not isinstance(raw, dict):
        raise MapError(f"{path}: map metadata 'sessions' is not a mapping")
    out = {}
    for key, value in raw.items():
        try:
            out[int(key)] = SessionRecord.from_json(value, f"{path}: session {key}")
        except ValueError as exc:
            raise MapError(str(exc)) from None
    return out


def _read_keyframes(con: sqlite3.Connection, path: Path, manifest: "Manifest",
                    keep_from: int) -> tuple[list["Keyframe"], np.ndarray]:
    """Every keyframe (all checked), and the descriptors [N - keep_from, D] float32 of ids >= keep_from
    (those an index snapshot does not cover; the others are not read)."""
    n, dim = manifest.count, manifest.model.descriptor_dim
    tail = np.empty((max(0, n - keep_from), dim), np.float32)
    keyframes: list[Keyframe] = []
    v2 = manifest.format_version == 2
    extra = ", descriptor, descriptor_crc" if v2 else ""
    cur = con.execute(f"SELECT {','.join(KEYFRAME_COLUMNS)}{extra}, crc FROM keyframes ORDER BY id")
    with _no_gc():  # a million new objects, none in a cycle: the collector's passes would cost seconds
        _fill_keyframes(cur, keyframes, tail, keep_from, n, dim, v2, path)
    if len(keyframes) != n:
        raise MapError(f"{path}: the metadata counts {n} keyframes but the table holds {len(keyframes)}")
    if not v2 and len(tail):
        tail[:] = read_vectors(con, None, range(keep_from, n), dim, path)
    return keyframes, tail


def read_new_keyframes(con: sqlite3.Connection, path: Path, first: int) -> tuple["Manifest", list["Keyframe"],
                                                                                 np.ndarray]:
    """(metadata, keyframes with ids >= ``first``, their descriptors [n, D] float32) of a format-3
    store, every row checked, in one read transaction: what a follower of a growing map (the fleet
    node beside a map builder) reads since its last call."""
    con.execute("BEGIN")
    try:
        manifest = manifest_of(_meta_value(con, path), path)
        if manifest.format_version == 2:
            raise MapError(f"{path}: a format-2 (v0.4) map: open it with a map builder once to migrate it")
        n, dim = manifest.count, manifest.model.descriptor_dim
        cur = con.execute(f"SELECT {','.join(KEYFRAME_COLUMNS)}, crc FROM keyframes WHERE id >= ? AND id < ? "
                          "ORDER BY id", (int(first), n))
        out: list[Keyframe] = []
        for row in _rows(cur):
            i = int(first) + len(out)
            if row[0] != i:
                raise MapError(f"{path}: keyframe ids are not contiguous at id {i} (id {row[0]!r})")
            if keyframe_crc(row[:-1]) != row[-1]:
                _check_crc(row, path, f"keyframe {i}")
            out.append(_keyframe_of(row, i, path))
        if first + len(out) != max(n, first):
            raise MapError(f"{path}: the metadata counts {n} keyframes but the table holds {first + len(out)}")
        vectors = read_vectors(con, None, range(first, first + len(out)), dim, path)
        return manifest, out, vectors
    except sqlite3.Error as exc:
        raise sqlite_error(path, "cannot read the map database", exc) from None
    except UnicodeDecodeError:
        raise MapError(f"{path}: holds text that is not UTF-8 (a corrupt file)") from None
    finally:
        con.execute("ROLLBACK")


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _fill_keyframes(cur: sqlite3.Cursor, keyframes: list["Keyframe"], tail: np.ndarray, keep_from: int, n: int,
                    dim: int, v2: bool, path: Path) -> None:
    for row in _rows(cur):
        i = len(keyframes)
        if row[0] != i:
            raise MapError(f"{path}: keyframe ids are not contiguous at row {i} (id {row[0]!r})")
        if i >= n:
            raise MapError(f"{path}: more keyframes than the metadata's count {n}")
        if v2:  # format 2: the row's CRC covers the descriptor's own CRC32
            _check_crc((*row[:_KF_META], row[_KF_META + 1], row[-1]), path, f"keyframe {i}")
            if i >= keep_from:
                blob = row[_KF_META]
                if not isinstance(blob, bytes) or zlib.crc32(blob) != row[_KF_META + 1]:
                    raise MapError(f"{path}: keyframe {i}: descriptor fails its checksum (the file is corrupt; "
                                   "restore it from a copy, or remove the map and rebuild it)")
                tail[i - keep_from] = _vector(blob, np.float32, dim, path, i)
        elif keyframe_crc(row[:-1]) != row[-1]:  # the fast path's bytes differ only for odd value types
            _check_crc(row, path, f"keyframe {i}")
        keyframes.append(_keyframe_of(row, i, path))


def _keyframe_of(row: Sequence[Any], i: int, path: Path) -> "Keyframe":
    """The Keyframe of a stored row (its CRC checked): numbers checked for being finite in one sum
    (NaN and infinity propagate through it) before the full check names the bad one."""
    try:
        stamp, pose = float(row[1]), tuple(map(float, row[4:11]))
        gps = None if row[11] is None else (float(row[11]), float(row[12]), float(row[13]))
        if not math.isfinite(stamp + sum(pose) + (sum(gps) if gps else 0.0)):
            return Keyframe(stamp=stamp, pose=pose, gps=gps)  # type: ignore[arg-type]  # raises, naming the value
        return Keyframe.stored(stamp, pose, sys.intern(str(row[2])), sys.intern(str(row[3])), gps,  # type: ignore[arg-type]
                               str(row[14]), i, int(row[15]))
    except (MapError, TypeError, ValueError, OverflowError) as exc:
        raise MapError(f"{path}: keyframe {i}: {exc}") from None


def _vector(blob: Any, dtype: Any, dim: int, path: Path, i: int) -> np.ndarray:
    """A stored descriptor blob as float32 [D], checked for size and finite values."""
    size = np.dtype(dtype).itemsize
    if not isinstance(blob, bytes) or len(blob) != size * dim:
        raise MapError(f"{path}: keyframe {i}: descriptor is not {dim} {np.dtype(dtype).name} values")
    d = np.frombuffer(blob, dtype).astype(np.float32)
    if not np.isfinite(d).all():
        raise MapError(f"{path}: keyframe {i}: descriptor has NaN or infinite values")
    return d


def read_vectors(con: sqlite3.Connection, lock: threading.Lock | None, ids: Iterable[int], dim: int,
                 path: Path | str) -> np.ndarray:
    """The stored descriptors [len(ids), D] float32 of keyframes ``ids`` (format 3), each checked
    against its checksum; MapError naming the keyframe otherwise. Contiguous ranges are read
    with one range query, scattered ids (re-ranking candidates, any order) with IN queries."""
    ids = [int(i) for i in ids]
    out = np.empty((len(ids), dim), np.float32)
    path = Path(path)
    if not ids:
        return out
    contiguous = ids == list(range(ids[0], ids[0] + len(ids)))
    try:
        if lock is not None:
            lock.acquire()
        try:
            if contiguous:
                cur = con.execute("SELECT id, descriptor, crc FROM vectors WHERE id >= ? AND id < ? ORDER BY id",
                                  (ids[0], ids[0] + len(ids)))
                rows: Iterable[tuple] = _rows(cur)
            else:  # sorted ids, at most 500 per query (SQLite's limit on bound values is 999 in old builds)
                rows = []  # type: ignore[var-annotated]
                for a in range(0, len(ids), 500):
                    part = ids[a:a + 500]
                    got_rows = {r[0]: r for r in con.execute(
                        f"SELECT id, descriptor, crc FROM vectors WHERE id IN ({','.join('?' * len(part))})", part)}
                    rows += [got_rows.get(i) for i in part]
            got = 0
            size = dim * np.dtype(VECTOR_DTYPE).itemsize
            half = out[:, : dim // 2 + 1].view(VECTOR_DTYPE)  # each row's first half holds its float16 bytes
            for k, row in enumerate(rows):
                if row is None or row[0] != ids[k]:
                    raise MapError(f"{path}: keyframe {ids[k]}: no stored descriptor (the file is corrupt; "
                                   "restore it from a copy, or remove the map and rebuild it)")
                blob = row[1]
                if type(blob) is not bytes or type(row[0]) is not int or vector_crc(row[0], blob) != row[2]:
                    _check_crc(row, path, f"keyframe {ids[k]}: descriptor")  # names the fault (or passes odd types)
                if len(blob) != size:
                    raise MapError(f"{path}: keyframe {ids[k]}: descriptor is not {dim} float16 values")
                half[k, :dim] = np.frombuffer(blob, VECTOR_DTYPE)
                got += 1
        finally:
            if lock is not None:
                lock.release()
    except (sqlite3.Error, UnicodeDecodeError) as exc:
        raise MapError(f"{path}: stored descriptors unreadable ({exc})") from None
    if got != len(ids):
        raise MapError(f"{path}: keyframe {ids[got]}: no stored descriptor (the file is corrupt; restore it from "
                       "a copy, or remove the map and rebuild it)")
    for a in range(0, len(ids), 1024):  # float16 -> float32 in place, in blocks (one temporary block)
        b = min(len(ids), a + 1024)
        out[a:b] = half[a:b, :dim].astype(np.float32)
    bad = ~np.isfinite(out).all(axis=1)
    if bad.any():
        raise MapError(f"{path}: keyframe {ids[int(np.argmax(bad))]}: descriptor has NaN or infinite values")
    return out


def _complete_index(index: Any, source: Callable[[Iterable[int]], np.ndarray], first: int, kind: str,
                    entry: dict[str, Any] | None, n: int, dim: int, notes: list[str]) -> Any:
    """The snapshot's index (holding ids < ``first``) extended with the keyframes after it, or
    one built from them all; vectors come from ``source`` (ids -> float32 rows) in chunks, and an
    exact index is filled in place, so the index is the only copy of them in memory."""
    from vpr_ros.config import IndexConfig
    from vpr_ros.mapping.index import build_index, empty_index, filled_flat, set_search_params

    cfg = IndexConfig()
    chunks = lambda a: (source(range(i, min(n, i + 4096))) for i in range(a, n, 4096))  # noqa: E731
    if index is not None:
        for x in chunks(first):
            index.add(x)
    else:
        if kind != "flat" and entry is None and n:
            notes.append(f"no '{kind}' index snapshot yet: built from the stored descriptors")
        if kind == "flat":
            index = filled_flat(chunks(0), n, dim)
        elif kind == "hnsw":
            index = empty_index(kind, dim, cfg)
            for x in chunks(0):
                index.add(x)
        else:
            try:  # IVF kinds train on every vector
                index = build_index(source(range(n)), kind, cfg)
            except MapError:  # too few keyframes to train IVF: search exactly until there are enough
                index = filled_flat(chunks(0), n, dim)
                notes.append(f"'{kind}' needs more keyframes to train; searching exactly meanwhile")
    set_search_params(index, cfg)
    return index


def _complete_compact(con: sqlite3.Connection, path: Path, manifest: "Manifest", index: Any,
                      entry: dict[str, Any] | None, notes: list[str]) -> Any:
    """A compact index: the snapshot's, extended with the stored vectors after it in chunks (so a
    large map's vectors are never all in memory); without a snapshot, trained and filled from the
    store (exact search over them all while the map is too small to train one)."""
    from vpr_ros.config import IndexConfig
    from vpr_ros.mapping.index import build_compact, build_index, compact_min_count, set_search_params

    n, dim, cfg = manifest.count, manifest.model.descriptor_dim, IndexConfig()

    def source(ids: Iterable[int]) -> np.ndarray:
        return read_vectors(con, None, ids, dim, path)

    if index is None:
        if n < compact_min_count(n, dim, cfg):
            index = build_index(source(range(n)), "flat", cfg)
            if n:
                notes.append("'compact' needs more keyframes to train; searching exactly meanwhile")
        else:
            if entry is None:
                notes.append("no 'compact' index snapshot yet: trained and built from the stored descriptors")
            index = build_compact(source, n, dim, cfg)
    else:
        for a in range(int(index.ntotal), n, 4096):
            index.add(source(range(a, min(n, a + 4096))))
    set_search_params(index, cfg)
    return index


def _rows(cur: sqlite3.Cursor) -> Iterator[tuple]:
    while batch := cur.fetchmany(256):
        yield from batch


def read_features(con: sqlite3.Connection, lock: threading.Lock, i: int, where: str) -> "LocalFeatures | None":
    """The local features of keyframe ``i`` (checksum verified), None if it has none."""
    try:
        with lock:
            row = con.execute(f"SELECT {','.join(FEATURE_COLUMNS)}, crc FROM local_features WHERE id = ?",
                              (int(i),)).fetchone()
    except (sqlite3.Error, UnicodeDecodeError) as exc:
        raise MapError(f"{where}: keyframe {i}: stored local features unreadable ({exc})") from None
    if row is None:
        return None
    _check_crc(row, Path(where), f"local features of keyframe {i}")
    return features_from_row(row, f"{where}: keyframe {i}")


def feature_bytes(con: sqlite3.Connection, lock: threading.Lock, where: str) -> tuple[int, int]:
    """(rows, total bytes) of the stored local features."""
    try:
        with lock:
            row = con.execute("SELECT COUNT(*), SUM(length(keypoints) + length(descriptors) + "
                              "COALESCE(length(points3d), 0)) FROM local_features").fetchone()
    except (sqlite3.Error, UnicodeDecodeError) as exc:
        raise MapError(f"{where}: stored local features unreadable ({exc})") from None
    return int(row[0] or 0), int(row[1] or 0)


def _index_from_file(root: Path, entry: dict[str, Any], kind: str, manifest: "Manifest") -> tuple[Any, str]:
    """The index snapshot named by ``entry`` if it is intact (sha256, read as a stream: no second
    copy in memory) and fits the map, else (None, why)."""
    import faiss

    from vpr_ros.mapping.index import faiss_kind, kind_of

    try:
        name, count, sha = str(entry["file"]), int(entry["count"]), str(entry["sha256"])
    except (KeyError, TypeError, ValueError):
        return None, "is described wrongly"
    if "/" in name or name.startswith("."):
        return None, "has a bad name"
    path = root / name
    h = hashlib.sha256()
    try:  # one descriptor for the hash and faiss: what was hashed is what is read
        fd = open_regular(path, "index snapshot", snapshot_size_limit(manifest), MapError)
    except FileNotFoundError:
        return None, "is missing (a newer save replaced it)"
    except MapError as exc:
        return None, f"is refused: {str(exc).split(': ', 1)[-1]}"
    with os.fdopen(fd, "rb") as fh:
        try:
            while chunk := fh.read(1 << 24):
                h.update(chunk)
        except OSError as exc:
            return None, f"is unreadable ({exc.strerror or exc})"
        if h.hexdigest() != sha:
            return None, "fails its sha256 (corrupt)"
        try:
            fh.seek(0)
            index = faiss.read_index(faiss.PyCallbackIOReader(fh.read))  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - faiss raises RuntimeError with its own text
            first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
            return None, f"cannot be read by faiss ({first})"
    if kind_of(index) != faiss_kind(kind) or index.d != manifest.model.descriptor_dim or index.ntotal != count \
            or count > manifest.count:
        return None, "does not fit the map"
    return index, ""


def snapshot_size_limit(manifest: "Manifest") -> int:
    """The largest index snapshot a map of ``manifest.count`` keyframes can have (bytes): a generous
    bound over faiss's layouts (flat: 4·D per vector; HNSW adds its links; IVF its centroids, at
    most one per vector, and ids; PQ its codebooks) so that a huge or sparse foreign file is
    refused before it is hashed."""
    d = int(manifest.model.descriptor_dim)
    return (64 << 20) + int(manifest.count) * (8 * d + 4096)


# ---------------------------------------------------------------------------- writing
class StoreWriter:
    """Durable write transactions on one map database. The caller holds the directory's
    :class:`~vpr_ros.mapping.store.lock.WriterLock`; methods are thread-safe."""

    def __init__(self, root: Path, path: Path) -> None:
        self.root, self.path = root, path
        self.con = connect_rw(path)
        self._lock = threading.Lock()
        self.guard: Callable[[], None] | None = None  # checked in every write transaction (the writer lock)
        try:
            meta = _meta_value(self.con, path)
            self.manifest = manifest_of(meta, path)
        except (sqlite3.Error, UnicodeDecodeError) as exc:
            self.con.close()
            raise sqlite_error(path, "cannot read the map database", exc) from None
        except MapError:
            self.con.close()
            raise
        self.generation = int(meta["generation"])
        self.count = int(meta["count"])
        self.index_entry = meta["index"] if isinstance(meta["index"], dict) else None

    @staticmethod
    def create(path: Path, manifest: "Manifest") -> None:
        """A new database at ``path`` (which must not exist) with ``manifest``'s metadata and no
        keyframes; fsynced and closed."""
        if path.exists():
            raise MapError(f"{path}: exists already")
        con = connect_rw(path, new=True, page_size=page_size_for(manifest.model.descriptor_dim))
        try:
            con.execute("BEGIN IMMEDIATE")
            for stmt in _SCHEMA:
                con.execute(stmt)
            _put_meta(con, {**manifest_meta(manifest), "index": None})
            con.execute("COMMIT")
        except sqlite3.Error as exc:
            raise sqlite_error(path, "cannot create the map database", exc) from None
        finally:
            con.close()

    def _transaction(self, what: str, body: Callable[[sqlite3.Connection], None],
                     meta: dict[str, Any] | None = None, new_generation: bool = True) -> None:
        with self._lock:
            con = self.con
            try:
                con.execute("BEGIN IMMEDIATE")
                try:
                    if self.guard is not None:
                        self.guard()
                    body(con)
                    updates = dict(meta or {})
                    if new_generation:
                        updates["generation"] = self.generation + 1
                    if updates:
                        _put_meta(con, updates)
                    con.execute("COMMIT")
                except BaseException:
                    if con.in_transaction:
                        con.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise sqlite_error(self.path, f"cannot {what}", exc) from None
            except OSError as exc:
                raise sqlite_error(self.path, f"cannot {what}", exc) from None
            if new_generation:
                self.generation += 1

    def commit(self, keyframes: Sequence["Keyframe"], descriptors: "np.ndarray | Callable[[int, int], np.ndarray]",
               features: dict[int, "LocalFeatures"], done_pending: Iterable[int] = (),
               meta: dict[str, Any] | None = None) -> None:
        """Store keyframes (ids follow the stored count) with their descriptors [N, D] (an array, or a
        function giving rows a..b of it) and local features, delete the pending frames they came
        from, update ``meta``: one transaction."""
        n = len(keyframes)
        if n and keyframes[0].id != self.count:
            raise MapError(f"{self.path}: keyframe {keyframes[0].id} does not follow the {self.count} stored")
        done = [(int(s),) for s in done_pending]
        get = descriptors if callable(descriptors) else (lambda a, b: descriptors[a:b])  # type: ignore[index]

        def body(con: sqlite3.Connection) -> None:
            for a in range(0, n, 1024):  # in chunks: a whole map is never copied at once
                b = min(n, a + 1024)
                con.executemany(f"INSERT INTO keyframes VALUES ({','.join('?' * (_KF_META + 1))})",
                                [keyframe_row(kf) for kf in keyframes[a:b]])
                con.executemany("INSERT INTO vectors VALUES (?, ?, ?)",
                                [vector_row(kf.id, d) for kf, d in zip(keyframes[a:b], get(a, b))])
            for i, f in sorted(features.items()):
                con.execute(f"INSERT INTO local_features VALUES ({','.join('?' * (len(FEATURE_COLUMNS) + 1))})",
                            features_row(i, f))
            con.executemany("DELETE FROM pending WHERE seq = ?", done)

        self._transaction("store keyframes", body, {**(meta or {}), "count": self.count + n})
        self.count += n

    def update_poses(self, keyframes: Sequence["Keyframe"], meta: dict[str, Any] | None = None) -> None:
        """Rewrite the poses of stored keyframes (their other columns and the descriptor stay) and
        ``meta``, in one transaction."""
        rows = []
        for kf in keyframes:
            values = keyframe_meta(kf)
            rows.append((*values[4:11], values[0]))

        def body(con: sqlite3.Connection) -> None:
            for pose_and_id in rows:
                i = pose_and_id[-1]
                old = con.execute(f"SELECT {','.join(KEYFRAME_COLUMNS)} FROM keyframes WHERE id = ?", (i,)).fetchone()
                if old is None:
                    raise MapError(f"{self.path}: no stored keyframe {i} to move")
                new = (*old[:4], *pose_and_id[:7], *old[11:])
                con.execute("UPDATE keyframes SET x=?, y=?, z=?, qx=?, qy=?, qz=?, qw=?, crc=? WHERE id=?",
                            (*pose_and_id[:7], row_crc(new), i))

        self._transaction("update keyframe poses", body, meta)

    def set_meta(self, values: dict[str, Any]) -> None:
        self._transaction("update the map metadata", lambda con: None, values)

    # pending frames
    def add_pending(self, frame: PendingFrame) -> int:
        """Store an accepted frame durably; returns its sequence number."""
        try:
            header = frame.header_json()
        except (ValueError, TypeError) as exc:
            raise MapError(f"{self.path}: accepted keyframe at {frame.keyframe.stamp} cannot be stored ({exc})") from None
        image = frame.image.data
        depth = frame.depth.data if frame.depth is not None else None
        out: list[int] = []

        def body(con: sqlite3.Connection) -> None:
            seq = int(con.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM pending").fetchone()[0])
            seq = max(seq, int(con.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM sqlite_sequence "
                                           "WHERE name = 'pending'").fetchone()[0]))
            con.execute("INSERT INTO pending VALUES (?, ?, ?, ?, ?)",
                        (seq, header, image, depth, row_crc((seq, header, image, depth))))
            out.append(seq)

        self._transaction("store the accepted keyframe", body, new_generation=False)
        return out[0]

    def pending_seqs(self) -> list[int]:
        with self._lock:
            try:
                return [int(r[0]) for r in self.con.execute("SELECT seq FROM pending ORDER BY seq")]
            except sqlite3.Error as exc:
                raise sqlite_error(self.path, "cannot list pending keyframes", exc) from None

    def read_pending(self, seq: int) -> PendingFrame:
        with self._lock:
            try:
                row = self.con.execute("SELECT seq, header, image, depth, crc FROM pending WHERE seq = ?",
                                       (int(seq),)).fetchone()
            except (sqlite3.Error, UnicodeDecodeError) as exc:
                raise sqlite_error(self.path, f"cannot read pending keyframe {seq}", exc) from None
        if row is None:
            raise MapError(f"{self.path}: no pending keyframe {seq}")
        try:
            _check_crc(row, self.path, f"pending keyframe {seq}")
            return PendingFrame.from_row(row[0], row[1], row[2], row[3], str(self.path))
        except DamagedPending:
            raise
        except MapError as exc:
            raise DamagedPending(str(exc).replace("; restore it from a copy, or remove the map and rebuild it", "")
                                 ) from None

    def drop_pending(self, seq: int) -> None:
        """Forget a pending frame that cannot be encoded (its image is unusable)."""
        def body(con: sqlite3.Connection) -> None:
            con.execute("DELETE FROM pending WHERE seq = ?", (int(seq),))

        self._transaction("drop a pending keyframe", body, new_generation=False)

    def reclaim_space(self) -> None:
        """Give the pages of encoded pending images back to the file system once none is pending
        (while some are, new ones reuse the freed pages)."""
        with self._lock:
            try:
                if self.con.execute("SELECT 1 FROM pending LIMIT 1").fetchone() is None:
                    free = int(self.con.execute("PRAGMA freelist_count").fetchone()[0])
                    if free:
                        self.con.execute("BEGIN IMMEDIATE")
                        try:
                            for _ in range(free):  # Python's sqlite3 steps the pragma once: a page a call
                                self.con.execute("PRAGMA incremental_vacuum(1)").fetchall()
                        finally:
                            self.con.execute("COMMIT")
            except sqlite3.Error:
                pass  # space is reused by later rows anyway

    # index snapshots
    def write_index(self, index: Any, kind: str) -> str:
        """Write a snapshot of ``index`` (covering ``index.ntotal`` keyframes) and name it in the
        metadata; keeps the previous snapshot (a reader may still be reading it). Returns its name."""
        import faiss

        count = int(index.ntotal)
        name = f"index-{self.manifest.store_id}-{uuid.uuid4().hex[:8]}.faiss"
        target = self.root / name
        tmp = target.with_name(f".{name}.tmp-{os.getpid()}")
        try:  # written by faiss itself and hashed as a stream: no copy of a large index in memory
            faiss.write_index(index, str(tmp))
            h = hashlib.sha256()
            with open(tmp, "rb+") as fh:
                while chunk := fh.read(1 << 24):
                    h.update(chunk)
                os.fsync(fh.fileno())
            os.replace(tmp, target)
            fsync_dir(self.root)
        except Exception as exc:  # noqa: BLE001 - OSError, or faiss's RuntimeError for a failed write
            raise MapError(f"{target}: cannot write the index snapshot ({getattr(exc, 'strerror', None) or exc})") from None
        finally:
            tmp.unlink(missing_ok=True)
        entry = {"file": name, "kind": kind, "count": count, "sha256": h.hexdigest()}
        previous = self.index_entry
        try:
            self._transaction("record the index snapshot", lambda con: None, {"index": entry, "index_type": kind})
        except MapError:
            target.unlink(missing_ok=True)
            raise
        self.index_entry = entry
        keep = {name, previous.get("file") if previous else None}
        for f in self.root.glob(f"index-{self.manifest.store_id}-*.faiss"):
            if f.name not in keep:
                f.unlink(missing_ok=True)
        return name

    def close(self) -> None:
        """Move the journal into the database file (a copy of the .sqlite alone is then complete)
        and close."""
        self.reclaim_space()
        with self._lock:
            try:
                self.con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass  # a reader still in an old snapshot: the journal stays, SQLite reads it
            try:
                self.con.close()
            except sqlite3.Error:
                pass


def write_file_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary name, fsync, rename over ``path``, fsync the directory;
    nothing is left behind on failure (MapError naming ``path``)."""
    with replaced_atomically(path, MapError, strict=True) as tmp:
        tmp.write_bytes(data)


def fsync_dir(path: Path) -> None:
    """A rename in ``path`` made durable; failures raise (the map store relies on it)."""
    files_fsync_dir(path, strict=True)
