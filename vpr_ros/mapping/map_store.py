"""A map on disk: manifest + faiss index + keyframe table, saved atomically.

Directory layout (format version 1)::

    manifest.yaml             written last, atomically (temp + fsync + rename)
    index.<gen>.faiss         faiss index; search ids are keyframe ids
    keyframes.<gen>.sqlite    one row per keyframe (id, stamp, camera, frame_id, pose, gps, image)

Each save writes a new generation of data files, then swaps the manifest, then removes
the old generation. A process killed at any point leaves a manifest that points at
complete files, so the previous map stays loadable. No pickle anywhere.
"""
from __future__ import annotations

import datetime as _dt
import math
import os
import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np
import yaml

from vpr_ros.config import IMAGENET_MEAN, IMAGENET_STD
from vpr_ros.errors import MapError

if TYPE_CHECKING:
    from vpr_ros.config import IndexConfig

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
        if len(self.pose) != 7 or not all(math.isfinite(v) for v in self.pose):
            raise MapError(f"keyframe at stamp {self.stamp}: pose must be 7 finite numbers, got {self.pose}")
        if not math.isfinite(self.stamp):
            raise MapError(f"keyframe: stamp must be finite, got {self.stamp}")


@dataclass
class Manifest:
    """Everything needed to validate a map before using it."""

    model: ModelIdentity
    count: int = 0
    map_frame: str = "map"
    source: str = ""
    metric: str = "inner_product"
    index_type: str = "flat"
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
        try:
            d = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise MapError(f"{source}: invalid YAML: {exc}") from None
        if not isinstance(d, dict):
            raise MapError(f"{source}: manifest is not a mapping")
        version = d.get("format_version")
        if version != FORMAT_VERSION:
            raise MapError(f"{source}: map format version {version!r} is not supported "
                           f"(this vpr_ros reads version {FORMAT_VERSION})")
        d.pop("files", None)
        try:
            m = d.pop("model")
            model = ModelIdentity(**{**m, "mean": tuple(m["mean"]), "std": tuple(m["std"])})
            return cls(model=model, **d)
        except (KeyError, TypeError) as exc:
            raise MapError(f"{source}: manifest is missing or has unknown fields ({exc})") from None


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
                 keyframes: list[Keyframe] | None = None) -> None:
        import faiss

        self.manifest = manifest
        self.index = index if index is not None else faiss.IndexFlatIP(manifest.model.descriptor_dim)
        self.keyframes: list[Keyframe] = keyframes or []

    @classmethod
    def create(cls, model: ModelIdentity, map_frame: str = "map", source: str = "") -> "VprMap":
        """An empty map for ``model``."""
        return cls(Manifest(model=model, map_frame=map_frame, source=source))

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def model(self) -> ModelIdentity:
        return self.manifest.model

    def add(self, descriptors: np.ndarray, keyframes: Sequence[Keyframe]) -> list[int]:
        """Append descriptors [N, D] (L2-normalised) with their keyframes; returns their ids."""
        d = np.ascontiguousarray(descriptors, dtype=np.float32)
        if d.ndim != 2 or d.shape[1] != self.model.descriptor_dim or d.shape[0] != len(keyframes):
            raise MapError(f"add: descriptors {list(d.shape)} do not match {len(keyframes)} keyframes "
                           f"of dimension {self.model.descriptor_dim}")
        if not np.isfinite(d).all():
            raise MapError("add: descriptors contain NaN or infinite values")
        first = len(self)
        self.index.add(d)
        ids = list(range(first, int(self.index.ntotal)))
        for i, kf in zip(ids, keyframes):
            kf.id = i
            self.keyframes.append(kf)
        self.manifest.count = len(self)
        return ids

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
        _write_atomic(root / kf_name, lambda p: _write_keyframes(p, self.keyframes))
        _write_atomic(root / MANIFEST, lambda p: p.write_text(new_manifest.to_yaml(), encoding="utf-8"))
        _fsync_dir(root)
        self.manifest = new_manifest
        keep = set(new_manifest.files()) | {MANIFEST}
        for f in root.iterdir():
            if f.name not in keep and (f.name.startswith(("index.", "keyframes.", ".index.", ".keyframes.", ".manifest.yaml.tmp"))):
                f.unlink(missing_ok=True)
        return root

    @staticmethod
    def read_manifest(map_dir: str | Path) -> Manifest:
        """Only the manifest of a map directory (quick validation before a full load)."""
        root = Path(map_dir)
        if not (root / MANIFEST).is_file():
            raise MapError(f"{root}: not a map directory (no {MANIFEST})")
        return Manifest.from_yaml((root / MANIFEST).read_text(encoding="utf-8"), str(root / MANIFEST))

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
            raise MapError(f"{idx_path}: cannot read faiss index ({str(exc).splitlines()[0][:200]})") from None
        keyframes = _read_keyframes(kf_path)
        if index.d != manifest.model.descriptor_dim:
            raise MapError(f"{idx_path}: index dimension {index.d} != manifest descriptor_dim "
                           f"{manifest.model.descriptor_dim}")
        if not (index.ntotal == manifest.count == len(keyframes)):
            raise MapError(f"{root}: size mismatch: index has {index.ntotal}, manifest says "
                           f"{manifest.count}, keyframe table has {len(keyframes)}")
        from vpr_ros.config import IndexConfig
        from vpr_ros.mapping.index import kind_of, set_search_params

        if kind_of(index) != manifest.index_type:
            raise MapError(f"{idx_path}: index is '{kind_of(index)}' but the manifest says '{manifest.index_type}'")
        set_search_params(index, IndexConfig())
        vmap = cls(manifest, index, keyframes)
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


def _write_keyframes(path: Path, keyframes: Iterable[Keyframe]) -> None:
    con = sqlite3.connect(str(path))
    try:
        con.execute("CREATE TABLE keyframes (id INTEGER PRIMARY KEY, stamp REAL NOT NULL, camera TEXT, "
                    "frame_id TEXT, x REAL, y REAL, z REAL, qx REAL, qy REAL, qz REAL, qw REAL, "
                    "lat REAL, lon REAL, alt REAL, image_ref TEXT)")
        rows = [(kf.id, kf.stamp, kf.camera, kf.frame_id, *kf.pose,
                 *(kf.gps if kf.gps else (None, None, None)), kf.image_ref) for kf in keyframes]
        con.executemany(f"INSERT INTO keyframes VALUES ({','.join('?' * len(_COLUMNS))})", rows)
        con.commit()
    finally:
        con.close()


def _read_keyframes(path: Path) -> list[Keyframe]:
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = con.execute(f"SELECT {','.join(_COLUMNS)} FROM keyframes ORDER BY id").fetchall()
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise MapError(f"{path}: cannot read keyframe table ({exc})") from None
    out = []
    for i, r in enumerate(rows):
        if r[0] != i:
            raise MapError(f"{path}: keyframe ids are not contiguous at row {i} (id {r[0]})")
        gps = None if r[11] is None else (r[11], r[12], r[13])
        out.append(Keyframe(stamp=r[1], pose=tuple(r[4:11]), camera=r[2] or "", frame_id=r[3] or "",
                            gps=gps, image_ref=r[14] or "", id=r[0]))
    return out
