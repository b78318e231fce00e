"""A map on disk: manifest + faiss index + keyframe table, saved atomically.

Directory layout (format version 1)::

    manifest.yaml             written last, atomically (temp + fsync + rename)
    index.<gen>.faiss         faiss index; search ids are keyframe ids
    keyframes.<gen>.sqlite    one row per keyframe (id, stamp, camera, frame_id, pose, gps, image),
                              and a local_features table (keypoints, descriptors, optional 3-D
                              points and intrinsics per keyframe) for geometric verification

Each save writes a new generation of data files, then swaps the manifest, then removes
the old generation. A process killed at any point leaves a manifest that points at
complete files, so the previous map stays loadable. No pickle anywhere.
"""
from __future__ import annotations

import datetime as _dt
import logging
import math
import numbers
import os
import sqlite3
import threading
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np
import yaml

from vpr_ros.config import IMAGENET_MEAN, IMAGENET_STD
from vpr_ros.errors import MapError

if TYPE_CHECKING:
    from vpr_ros.config import IndexConfig
    from vpr_ros.verification.features import LocalFeatures

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.yaml"


@dataclass(frozen=True)
class ModelIdentity:
    """What a descriptor depends on; a map only works with the model that built it."""

    model_id: str
    weights_sha256: str
    input_size: int
    descriptor_dim: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    pca_id: str = ""

    @classmethod
    def of_backend(cls, backend: Any) -> "ModelIdentity":
        """Identity of an open DescriptorBackend."""
        return cls(backend.model_id, backend.weights_sha256, backend.input_size, backend.descriptor_dim,
                   pca_id=getattr(backend, "pca_id", ""))

    def differences(self, other: "ModelIdentity") -> list[str]:
        """Human-readable list of fields that differ (empty when compatible)."""
        a, b = asdict(self), asdict(other)
        return [f"{k}: map has {a[k]!r}, model has {b[k]!r}" for k in a
                if (tuple(a[k]) if isinstance(a[k], (list, tuple)) else a[k])
                != (tuple(b[k]) if isinstance(b[k], (list, tuple)) else b[k])]


@dataclass
class Keyframe:
    """Metadata of one map image. ``pose`` is (x, y, z, qx, qy, qz, qw) in ``map_frame``."""

    stamp: float
    pose: tuple[float, float, float, float, float, float, float]
    camera: str = "image"
    frame_id: str = ""
    gps: tuple[float, float, float] | None = None  # latitude, longitude, altitude
    image_ref: str = ""
    id: int = -1

    def __post_init__(self) -> None:
        if not isinstance(self.pose, (tuple, list)) or len(self.pose) != 7 or not all(_finite(v) for v in self.pose):
            raise MapError(f"keyframe at stamp {self.stamp}: pose must be 7 finite numbers, got {self.pose}")
        if not _finite(self.stamp):
            raise MapError(f"keyframe: stamp must be a finite number, got {self.stamp!r}")


@dataclass
class Manifest:
    """Everything needed to validate a map before using it."""

    model: ModelIdentity
    count: int = 0
    map_frame: str = "map"
    source: str = ""
    metric: str = "inner_product"
    index_type: str = "flat"
    local_features: str = ""       # kind of the stored local features ('orb', 'sift'), '' = none
    generation: int = 0
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat())
    format_version: int = FORMAT_VERSION

    def files(self) -> tuple[str, str]:
        """Names of the index and keyframe files of this generation."""
        return f"index.{self.generation}.faiss", f"keyframes.{self.generation}.sqlite"

    def to_yaml(self) -> str:
        d = asdict(self)
        d["model"]["mean"] = list(self.model.mean)
        d["model"]["std"] = list(self.model.std)
        idx, kf = self.files()
        d["files"] = {"index": idx, "keyframes": kf}
        return yaml.safe_dump(d, sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str, source: str) -> "Manifest":
        """Parse and validate a manifest; every problem is a MapError naming ``source`` and the field."""
        try:
            d = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            first = str(exc).strip().splitlines()[0][:200]
            raise MapError(f"{source}: not valid YAML (truncated or corrupt?): {first}") from None
        if not isinstance(d, dict):
            raise MapError(f"{source}: manifest is not a mapping (truncated or not a vpr_ros manifest)")
        if "format_version" not in d:
            raise MapError(f"{source}: no format_version (truncated, or not a vpr_ros map manifest)")
        version = d.get("format_version")
        if version != FORMAT_VERSION:
            raise MapError(f"{source}: map format version {version!r} is not supported "
                           f"(this vpr_ros reads version {FORMAT_VERSION})")
        d.pop("files", None)
        m = d.pop("model", None)
        if not isinstance(m, dict):
            raise MapError(f"{source}: field 'model' is missing or not a mapping")
        known = {f.name for f in fields(ModelIdentity)}
        if set(m) - known or {"model_id", "weights_sha256", "input_size", "descriptor_dim"} - set(m):
            raise MapError(f"{source}: field 'model' has unknown {sorted(set(m) - known)} or lacks "
                           f"{sorted({'model_id', 'weights_sha256', 'input_size', 'descriptor_dim'} - set(m))} keys")
        _check_types(source, "model", m, {"model_id": str, "weights_sha256": str, "input_size": int,
                                           "descriptor_dim": int, "pca_id": str})
        for key in ("mean", "std"):
            v = m.get(key, (0.0, 0.0, 0.0))
            if not (isinstance(v, (list, tuple)) and len(v) == 3 and all(_finite(x) for x in v)):
                raise MapError(f"{source}: model.{key} must be 3 finite numbers, got {v!r}")
        if m["descriptor_dim"] <= 0 or m["input_size"] <= 0:
            raise MapError(f"{source}: model.descriptor_dim and model.input_size must be positive")
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise MapError(f"{source}: unknown field(s) {sorted(unknown)}")
        _check_types(source, "", d, {"count": int, "map_frame": str, "source": str, "metric": str,
                                      "index_type": str, "generation": int, "created": str, "format_version": int,
                                      "local_features": str})
        if d.get("count", 0) < 0 or d.get("generation", 0) < 0:
            raise MapError(f"{source}: count and generation must not be negative")
        model = ModelIdentity(**{**m, "mean": tuple(m.get("mean", IMAGENET_MEAN)), "std": tuple(m.get("std", IMAGENET_STD))})
        return cls(model=model, **d)


def _finite(x: Any) -> bool:
    """A finite real number (Python or numpy), not a bool, None or text."""
    return isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_)) and math.isfinite(x)


def _check_types(source: str, prefix: str, d: dict, types: dict[str, type]) -> None:
    for key, kind in types.items():
        if key in d and not (isinstance(d[key], kind) and not (kind is int and isinstance(d[key], bool))):
            name = f"{prefix}.{key}" if prefix else key
            raise MapError(f"{source}: field '{name}' must be {kind.__name__}, got {type(d[key]).__name__} {d[key]!r}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, writer: Any) -> None:
    """Call ``writer(tmp_path)``, fsync it, and rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        writer(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class VprMap:
    """Keyframe descriptors in a faiss inner-product index plus their metadata.

    Descriptors are L2-normalised, so scores are cosine similarities in [-1, 1].
    Keyframe ids are the ids the index returns on search (insertion order).
    """

    def __init__(self, manifest: Manifest, index: Any | None = None,
                 keyframes: list[Keyframe] | None = None, features_db: Path | None = None) -> None:
        import faiss

        self.manifest = manifest
        self.index = index if index is not None else faiss.IndexFlatIP(manifest.model.descriptor_dim)
        self.keyframes: list[Keyframe] = keyframes or []
        self._features: dict[int, "LocalFeatures"] = {}  # added since the last save
        self._db: sqlite3.Connection | None = None       # read-only; kept open (survives a newer save)
        self._db_lock = threading.Lock()
        if features_db is not None:
            db = _connect_ro(features_db, check_same_thread=False)
            try:
                has = _has_table(db, "local_features")  # maps written before local features had none
            except (sqlite3.Error, UnicodeDecodeError) as exc:
                db.close()
                raise MapError(f"{features_db}: cannot read ({exc})") from None
            if has:
                self._db = db
            else:
                db.close()

    @classmethod
    def create(cls, model: ModelIdentity, map_frame: str = "map", source: str = "") -> "VprMap":
        """An empty map for ``model``."""
        return cls(Manifest(model=model, map_frame=map_frame, source=source))

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def model(self) -> ModelIdentity:
        return self.manifest.model

    def add(self, descriptors: np.ndarray, keyframes: Sequence[Keyframe],
            features: "Sequence[LocalFeatures | None] | None" = None) -> list[int]:
        """Append descriptors [N, D] (L2-normalised) with their keyframes (and their local
        features, for verification); returns their ids."""
        d = np.ascontiguousarray(descriptors, dtype=np.float32)
        if d.ndim != 2 or d.shape[1] != self.model.descriptor_dim or d.shape[0] != len(keyframes):
            raise MapError(f"add: descriptors {list(d.shape)} do not match {len(keyframes)} keyframes "
                           f"of dimension {self.model.descriptor_dim}")
        if not np.isfinite(d).all():
            raise MapError("add: descriptors contain NaN or infinite values")
        if features is not None and len(features) != len(keyframes):
            raise MapError(f"add: {len(features)} feature sets for {len(keyframes)} keyframes")
        first = len(self)
        self.index.add(d)
        ids = list(range(first, int(self.index.ntotal)))
        for k, (i, kf) in enumerate(zip(ids, keyframes)):
            kf.id = i
            self.keyframes.append(kf)
            f = features[k] if features is not None else None
            if f is not None:
                if self.manifest.local_features and f.kind != self.manifest.local_features:
                    raise MapError(f"add: '{f.kind}' features for a map of '{self.manifest.local_features}' features")
                self.manifest.local_features = f.kind
                self._features[i] = f
        self.manifest.count = len(self)
        return ids

    def local_features(self, i: int) -> "LocalFeatures | None":
        """The stored local features of keyframe ``i`` (None if it has none); read on demand."""
        if i in self._features:
            return self._features[i]
        if self._db is None:
            return None
        try:
            with self._db_lock:
                row = self._db.execute(f"SELECT {','.join(_FEATURE_COLUMNS)} FROM local_features WHERE id = ?",
                                       (int(i),)).fetchone()
        except (sqlite3.Error, UnicodeDecodeError) as exc:
            raise MapError(f"keyframe {i}: stored local features unreadable ({exc})") from None
        return _features_from_row(row, f"keyframe {i}") if row is not None else None

    def feature_stats(self) -> tuple[int, float]:
        """(keyframes with local features, mean bytes per keyframe)."""
        n, total = len(self._features), sum(f.nbytes for f in self._features.values())
        if self._db is not None:
            try:
                with self._db_lock:
                    row = self._db.execute("SELECT COUNT(*), SUM(length(keypoints) + length(descriptors) + "
                                           "COALESCE(length(points3d), 0)) FROM local_features").fetchone()
            except (sqlite3.Error, UnicodeDecodeError) as exc:
                raise MapError(f"stored local features unreadable ({exc})") from None
            n, total = n + int(row[0] or 0), total + int(row[1] or 0)
        return n, (total / n if n else 0.0)

    def close(self) -> None:
        """Release the read-only database handle (the map stays usable for search)."""
        with self._db_lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def reindex(self, kind: str, cfg: "IndexConfig | None" = None) -> None:
        """Rebuild the search index as ``kind`` ('flat', 'hnsw', 'ivf', 'ivfpq') from the stored vectors."""
        from vpr_ros.config import IndexConfig
        from vpr_ros.mapping.index import all_vectors, build_index

        self.index = build_index(all_vectors(self.index), kind, cfg or IndexConfig())
        self.manifest.index_type = kind

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by cosine: queries [M, D] -> (scores [M, k'], ids [M, k']), k' = min(k, size)."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.model.descriptor_dim:
            raise MapError(f"search: queries {list(q.shape)} do not have dimension {self.model.descriptor_dim}")
        k = min(k, len(self))
        if k == 0:
            return np.zeros((q.shape[0], 0), np.float32), np.zeros((q.shape[0], 0), np.int64)
        scores, ids = self.index.search(q, k)
        return scores, ids

    def check_model(self, model: ModelIdentity, where: str = "map") -> None:
        """Raise MapError listing every difference if the map was built by another model."""
        diffs = self.model.differences(model)
        if diffs:
            raise MapError(f"{where} was built by another model: " + "; ".join(diffs))

    # ---------------------------------------------------------------- persistence
    def save(self, map_dir: str | Path) -> Path:
        """Write the map atomically into ``map_dir`` (created if needed)."""
        import faiss

        root = Path(map_dir)
        root.mkdir(parents=True, exist_ok=True)
        old = _read_manifest_or_none(root)
        gen = max(self.manifest.generation, old.generation if old else -1) + 1
        new_manifest = Manifest(**{**self.manifest.__dict__, "generation": gen, "count": len(self)})
        idx_name, kf_name = new_manifest.files()
        _write_atomic(root / idx_name, lambda p: faiss.write_index(self.index, str(p)))
        with self._db_lock:
            _write_atomic(root / kf_name, lambda p: _write_keyframes(p, self.keyframes, self._features, self._db))
        _write_atomic(root / MANIFEST, lambda p: p.write_text(new_manifest.to_yaml(), encoding="utf-8"))
        _fsync_dir(root)
        self.manifest = new_manifest
        with self._db_lock:  # the features now live in the new file
            if self._db is not None:
                self._db.close()
            self._db = _connect_ro(root / kf_name, check_same_thread=False)
            self._features = {}
        keep = set(new_manifest.files()) | {MANIFEST}
        for f in root.iterdir():
            if f.name not in keep and (f.name.startswith(("index.", "keyframes.", ".index.", ".keyframes.", ".manifest.yaml.tmp"))):
                f.unlink(missing_ok=True)
        return root

    @staticmethod
    def read_manifest(map_dir: str | Path) -> Manifest:
        """Only the manifest of a map directory (quick validation before a full load)."""
        root = Path(map_dir)
        path = root / MANIFEST
        if not path.is_file():
            raise MapError(f"{root}: not a map directory (no {MANIFEST})")
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            raise MapError(f"{path}: not UTF-8 text (binary data or a corrupt file)") from None
        except OSError as exc:
            raise MapError(f"{path}: cannot read ({exc.strerror or exc})") from None
        return Manifest.from_yaml(text, str(path))

    @classmethod
    def load(cls, map_dir: str | Path, expect: ModelIdentity | None = None) -> "VprMap":
        """Load and validate a map; with ``expect``, refuse a map from another model."""
        import faiss

        root = Path(map_dir)
        manifest = cls.read_manifest(root)
        idx_name, kf_name = manifest.files()
        idx_path, kf_path = root / idx_name, root / kf_name
        for p in (idx_path, kf_path):
            if not p.is_file():
                raise MapError(f"{p}: file named by the manifest is missing")
        try:
            index = faiss.read_index(str(idx_path))
        except Exception as exc:  # faiss raises RuntimeError with its own text
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise MapError(f"{idx_path}: cannot read faiss index ({first})") from None
        keyframes = _read_keyframes(kf_path)
        if index.d != manifest.model.descriptor_dim:
            raise MapError(f"{idx_path}: index dimension {index.d} != manifest descriptor_dim "
                           f"{manifest.model.descriptor_dim}")
        if not (index.ntotal == manifest.count == len(keyframes)):
            raise MapError(f"{root}: size mismatch: index has {index.ntotal}, manifest says "
                           f"{manifest.count}, keyframe table has {len(keyframes)}")
        from vpr_ros.config import IndexConfig
        from vpr_ros.mapping.index import kind_of, set_search_params

        try:
            kind = kind_of(index)
        except Exception:  # noqa: BLE001 - an index type this vpr_ros never writes
            kind = type(index).__name__
        if kind != manifest.index_type:
            raise MapError(f"{idx_path}: index is '{kind}' but the manifest says '{manifest.index_type}'")
        set_search_params(index, IndexConfig())
        vmap = cls(manifest, index, keyframes, features_db=kf_path)
        if expect is not None:
            vmap.check_model(expect, where=str(root))
        return vmap

    def poses(self) -> np.ndarray:
        """All keyframe poses as float64 [N, 7]."""
        return np.array([kf.pose for kf in self.keyframes], np.float64).reshape(-1, 7)


def _read_manifest_or_none(root: Path) -> Manifest | None:
    try:
        return Manifest.from_yaml((root / MANIFEST).read_text(encoding="utf-8"), str(root / MANIFEST))
    except (FileNotFoundError, MapError):
        return None


_COLUMNS = ("id", "stamp", "camera", "frame_id", "x", "y", "z", "qx", "qy", "qz", "qw",
            "lat", "lon", "alt", "image_ref")


_FEATURE_COLUMNS = ("id", "kind", "width", "height", "n", "dim", "dtype", "keypoints", "descriptors", "points3d",
                    "intrinsics")
_FEATURE_DTYPES = {"uint8": np.uint8, "float32": np.float32, "float16": np.float16}


def _connect_ro(path: Path, check_same_thread: bool = True) -> sqlite3.Connection:
    """Read-only SQLite connection; as_uri() percent-encodes '#', '?' and '%', which would
    otherwise cut the file name short."""
    try:
        return sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True,
                               check_same_thread=check_same_thread)
    except sqlite3.Error as exc:
        raise MapError(f"{path}: cannot open ({exc})") from None


def _features_row(i: int, f: "LocalFeatures") -> tuple:
    return (i, f.kind, f.image_size[0], f.image_size[1], len(f), int(f.descriptors.shape[1]),
            str(f.descriptors.dtype), np.ascontiguousarray(f.keypoints, np.float32).tobytes(),
            np.ascontiguousarray(f.descriptors).tobytes(),
            None if f.points3d is None else np.ascontiguousarray(f.points3d, np.float32).tobytes(),
            None if f.intrinsics is None else f.intrinsics.as_array().tobytes())


def _features_from_row(row: tuple, where: str) -> "LocalFeatures":
    from vpr_ros.verification.features import CameraIntrinsics, LocalFeatures

    _, kind, w, h, n, dim, dtype, kp, desc, pts, intr = row
    try:
        if not isinstance(kind, str) or not all(isinstance(v, int) and v >= 0 for v in (w, h, n, dim)):
            raise ValueError(f"kind {kind!r}, size {w!r}x{h!r}, n {n!r}, dim {dim!r}")
        dt = _FEATURE_DTYPES[dtype]
        keypoints = np.frombuffer(kp, np.float32).reshape(n, 2)
        descriptors = np.frombuffer(desc, dt).reshape(n, dim)
        points3d = None if pts is None else np.frombuffer(pts, np.float32).reshape(n, 3)
        intrinsics = None if intr is None else CameraIntrinsics.from_array(np.frombuffer(intr, np.float64))
        result = LocalFeatures(str(kind), keypoints, descriptors, (int(w), int(h)), points3d, intrinsics)
    except (KeyError, ValueError, TypeError, OverflowError) as exc:
        raise MapError(f"{where}: stored local features are corrupt ({type(exc).__name__}: {exc})") from None
    return result


def _write_keyframes(path: Path, keyframes: Iterable[Keyframe], features: "dict[int, LocalFeatures]",
                     old: sqlite3.Connection | None) -> None:
    con = sqlite3.connect(str(path))
    try:
        con.execute("CREATE TABLE keyframes (id INTEGER PRIMARY KEY, stamp REAL NOT NULL, camera TEXT, "
                    "frame_id TEXT, x REAL, y REAL, z REAL, qx REAL, qy REAL, qz REAL, qw REAL, "
                    "lat REAL, lon REAL, alt REAL, image_ref TEXT)")
        con.execute("CREATE TABLE local_features (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, width INTEGER, "
                    "height INTEGER, n INTEGER, dim INTEGER, dtype TEXT, keypoints BLOB, descriptors BLOB, "
                    "points3d BLOB, intrinsics BLOB)")
        rows = [(kf.id, kf.stamp, kf.camera, kf.frame_id, *kf.pose,
                 *(kf.gps if kf.gps else (None, None, None)), kf.image_ref) for kf in keyframes]
        con.executemany(f"INSERT INTO keyframes VALUES ({','.join('?' * len(_COLUMNS))})", rows)
        placeholders = ",".join("?" * len(_FEATURE_COLUMNS))
        if old is not None:  # the previous generation's features, streamed
            try:
                if _has_table(old, "local_features"):
                    cur = old.execute(f"SELECT {','.join(_FEATURE_COLUMNS)} FROM local_features ORDER BY id")
                    while batch := cur.fetchmany(512):
                        con.executemany(f"INSERT OR REPLACE INTO local_features VALUES ({placeholders})",
                                        [r for r in batch if r[0] not in features])
            except (sqlite3.Error, UnicodeDecodeError) as exc:  # the file under us was damaged: save what is in memory
                log.warning("%s: local features of the previous generation unreadable (%s); saved without them",
                            path.parent, exc)
        con.executemany(f"INSERT OR REPLACE INTO local_features VALUES ({placeholders})",
                        [_features_row(i, f) for i, f in sorted(features.items())])
        con.commit()
    finally:
        con.close()


def _has_table(con: sqlite3.Connection, name: str) -> bool:
    return con.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() is not None


def _read_keyframes(path: Path) -> list[Keyframe]:
    """The keyframe table, read-only; every malformed row is a MapError naming file, id and column."""
    try:
        con = _connect_ro(path)
        try:
            rows = con.execute(f"SELECT {','.join(_COLUMNS)} FROM keyframes ORDER BY id").fetchall()
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise MapError(f"{path}: cannot read keyframe table ({exc})") from None
    except UnicodeDecodeError:
        raise MapError(f"{path}: keyframe table holds text that is not UTF-8 (a corrupt file)") from None
    out = []
    for i, r in enumerate(rows):
        if r[0] != i:
            raise MapError(f"{path}: keyframe ids are not contiguous at row {i} (id {r[0]})")
        for col, v in zip(_COLUMNS[4:11], r[4:11]):
            if not _finite(v):
                raise MapError(f"{path}: keyframe {i}: pose column '{col}' is {v!r}, not a finite number")
        if not _finite(r[1]):
            raise MapError(f"{path}: keyframe {i}: stamp is {r[1]!r}, not a finite number")
        gps = None
        if any(v is not None for v in r[11:14]):
            if not all(_finite(v) for v in r[11:14]):
                raise MapError(f"{path}: keyframe {i}: GPS (lat, lon, alt) is {r[11:14]!r}")
            gps = (float(r[11]), float(r[12]), float(r[13]))
        for col, v in zip(("camera", "frame_id"), r[2:4]):
            if v is not None and not isinstance(v, str):
                raise MapError(f"{path}: keyframe {i}: column '{col}' is {v!r}, not text")
        if r[14] is not None and not isinstance(r[14], str):
            raise MapError(f"{path}: keyframe {i}: column 'image_ref' is {r[14]!r}, not text")
        out.append(Keyframe(stamp=float(r[1]), pose=tuple(float(v) for v in r[4:11]), camera=r[2] or "",  # type: ignore[arg-type]
                            frame_id=r[3] or "", gps=gps, image_ref=r[14] or "", id=r[0]))
    return out
