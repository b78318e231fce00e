"""Format 1 (vpr_ros v0.3): ``manifest.yaml`` with the map's description, ``index.<gen>.faiss``
and ``keyframes.<gen>.sqlite``, all replaced by each whole-map save. Read as they are; a writer
opening one migrates it to the current format (:meth:`vpr_ros.mapping.map_store.VprMap.open_writer`).
"""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vpr_ros.errors import MapError
from vpr_ros.files import open_regular
from vpr_ros.mapping.store.database import FEATURE_COLUMNS, connect_ro, features_from_row, snapshot_size_limit
from vpr_ros.mapping.store.map_types import Keyframe, Manifest, finite

if TYPE_CHECKING:
    from vpr_ros.verification.features import LocalFeatures

UNIT_NORM_TOLERANCE = 1e-3  # float32 L2-normalised vectors are within ~1e-6 of norm 1; a flipped bit is far off
_CHECK_CHUNK = 4096  # vectors reconstructed at a time by the check (bounded extra memory)

_COLUMNS = ("id", "stamp", "camera", "frame_id", "x", "y", "z", "qx", "qy", "qz", "qw",
            "lat", "lon", "alt", "image_ref")


def files_v1(generation: int) -> tuple[str, str]:
    """Names of the index and keyframe files of a format-1 generation."""
    return f"index.{generation}.faiss", f"keyframes.{generation}.sqlite"


def manifest_v1(d: dict[str, Any], source: str) -> "Manifest":
    """A format-1 manifest (already parsed YAML) as a validated Manifest."""

    d = dict(d)
    d.pop("files", None)
    d.pop("format_version", None)
    m = d.pop("model", None)
    known = {"count", "map_frame", "source", "metric", "index_type", "local_features", "generation", "created"}
    unknown = set(d) - known
    if unknown:
        raise MapError(f"{source}: unknown field(s) {sorted(unknown)}")
    return Manifest.from_fields(m, d, source, format_version=1)


def load_v1(root: Path, manifest: "Manifest") -> tuple[Any, list["Keyframe"], Path]:
    """(faiss index, keyframes, keyframe database path) of a format-1 map, validated."""
    import faiss

    idx_name, kf_name = files_v1(manifest.generation)
    idx_path, kf_path = root / idx_name, root / kf_name
    limit = snapshot_size_limit(manifest)  # the same bound as a SQLite store's index snapshot
    try:
        fd = open_regular(idx_path, "the map's faiss index", limit, MapError)
    except FileNotFoundError:
        raise MapError(f"{idx_path}: file named by the manifest is missing") from None
    with os.fdopen(fd, "rb") as fh:
        try:
            index = faiss.read_index(faiss.PyCallbackIOReader(fh.read))  # type: ignore[attr-defined]
        except Exception as exc:  # faiss raises RuntimeError with its own text
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise MapError(f"{idx_path}: cannot read faiss index ({first})") from None
    if not kf_path.exists() and not kf_path.is_symlink():
        raise MapError(f"{kf_path}: file named by the manifest is missing")
    keyframes = _read_keyframes(kf_path)
    if index.d != manifest.model.descriptor_dim:
        raise MapError(f"{idx_path}: index dimension {index.d} != manifest descriptor_dim "
                       f"{manifest.model.descriptor_dim}")
    if not (index.ntotal == manifest.count == len(keyframes)):
        raise MapError(f"{root}: size mismatch: index has {index.ntotal}, manifest says "
                       f"{manifest.count}, keyframe table has {len(keyframes)}")
    from vpr_ros.mapping.index import kind_of

    try:
        kind = kind_of(index)
    except Exception:  # noqa: BLE001 - an index type this vpr_ros never writes
        kind = type(index).__name__
    if kind != manifest.index_type:
        raise MapError(f"{idx_path}: index is '{kind}' but the manifest says '{manifest.index_type}'")
    check_unit_descriptors(index, exact=kind != "ivfpq", where=str(idx_path))
    return index, keyframes, kf_path


def check_unit_descriptors(index: Any, exact: bool, where: str) -> None:
    """Format-1 maps carry no checksums: every stored descriptor must be finite and (where the
    index stores vectors exactly, i.e. not PQ) of unit norm within :data:`UNIT_NORM_TOLERANCE`;
    MapError naming the keyframe and the worst component otherwise. Reads in chunks."""
    from vpr_ros.mapping.index import all_vectors

    n = int(index.ntotal)
    for start in range(0, n, _CHECK_CHUNK):
        v = all_vectors(index, start, min(n, start + _CHECK_CHUNK))
        with np.errstate(over="ignore", invalid="ignore"):
            norms = np.linalg.norm(v.astype(np.float64), axis=1)
        finite = np.isfinite(v).all(axis=1)
        bad = ~finite | (np.abs(norms - 1.0) > UNIT_NORM_TOLERANCE if exact else ~finite)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            c = int(np.argmax(np.where(np.isfinite(v[row]), np.abs(v[row]), np.inf)))
            what = "is not finite" if not finite[row] else f"has norm {norms[row]:.6g}, not 1"
            raise MapError(f"{where}: keyframe {start + row}: descriptor {what} (component {c} = {v[row, c]:.6g}); "
                           f"{int(bad.sum())} damaged descriptor(s) in this block: the index file is corrupt "
                           "(restore it from a backup or rebuild the map)")


def has_features_table(con: sqlite3.Connection, path: Path) -> bool:
    try:
        return con.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='local_features'"
                           ).fetchone() is not None
    except (sqlite3.Error, UnicodeDecodeError) as exc:
        raise MapError(f"{path}: cannot read ({exc})") from None


def all_features_v1(path: Path) -> dict[int, "LocalFeatures"]:
    """Every stored local-feature row of a format-1 keyframe database (for migration)."""
    con = connect_ro(path)
    try:
        if not has_features_table(con, path):
            return {}
        rows = con.execute(f"SELECT {','.join(FEATURE_COLUMNS)} FROM local_features ORDER BY id").fetchall()
    except (sqlite3.Error, UnicodeDecodeError) as exc:
        raise MapError(f"{path}: stored local features unreadable ({exc})") from None
    finally:
        con.close()
    return {int(r[0]): features_from_row(r, f"{path}: keyframe {r[0]}") for r in rows}


def features_v1(con: sqlite3.Connection, i: int, where: str) -> "LocalFeatures | None":
    try:
        row = con.execute(f"SELECT {','.join(FEATURE_COLUMNS)} FROM local_features WHERE id = ?", (int(i),)).fetchone()
    except (sqlite3.Error, UnicodeDecodeError) as exc:
        raise MapError(f"keyframe {i}: stored local features unreadable ({exc})") from None
    return features_from_row(row, f"keyframe {i}") if row is not None else None


def _read_keyframes(path: Path) -> list["Keyframe"]:
    """The keyframe table, read-only; every malformed row is a MapError naming file, id and column."""

    try:
        con = connect_ro(path)
        try:
            rows = con.execute(f"SELECT {','.join(_COLUMNS)} FROM keyframes ORDER BY id").fetchall()
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise MapError(f"{path}: cannot read keyframe table ({exc})") from None
    except MapError as exc:
        raise MapError(f"{exc} (keyframe table)") from None
    except UnicodeDecodeError:
        raise MapError(f"{path}: keyframe table holds text that is not UTF-8 (a corrupt file)") from None
    out = []
    for i, r in enumerate(rows):
        if r[0] != i:
            raise MapError(f"{path}: keyframe ids are not contiguous at row {i} (id {r[0]})")
        for col, v in zip(_COLUMNS[4:11], r[4:11]):
            if not finite(v):
                raise MapError(f"{path}: keyframe {i}: pose column '{col}' is {v!r}, not a finite number")
        if not finite(r[1]):
            raise MapError(f"{path}: keyframe {i}: stamp is {r[1]!r}, not a finite number")
        gps = None
        if any(v is not None for v in r[11:14]):
            if not all(finite(v) for v in r[11:14]):
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
