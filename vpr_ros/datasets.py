"""Readers of image-folder datasets (ROS-free). Errors name the file and row."""
from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from vpr_ros.errors import DatasetError, ImageError
from vpr_ros.files import read_text

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def list_images(folder: Path) -> list[Path]:
    """Sorted image files of a folder; DatasetError if missing or empty."""
    if not folder.is_dir():
        raise DatasetError(f"{folder}: folder not found")
    files = image_files(folder.iterdir())
    if not files:
        raise DatasetError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def image_files(candidates: Iterable[Path]) -> list[Path]:
    """The sorted candidates with an image suffix, each checked to be a regular file before anything
    opens it (a FIFO named like an image would block a reader forever; a link loop or a device
    fails obscurely): DatasetError naming the first such entry."""
    from vpr_ros.files import check_readable_file

    files = sorted(p for p in candidates if p.suffix.lower() in IMAGE_SUFFIXES)
    for f in files:
        check_readable_file(f, "image", DatasetError)
    return files


def fingerprint_files(paths: Sequence[Path], h: "hashlib._Hash | None" = None) -> "hashlib._Hash":
    """sha256 over the ordered files' resolved paths, sizes and modification times."""
    h = h or hashlib.sha256()
    for p in paths:
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h


def check_sidecar(meta: Path, expected: dict, what: str, redo: str, error: type[Exception]) -> None:
    """Raise ``error`` naming ``meta`` when the JSON sidecar of a cache (``what``) is unreadable
    or records other inputs than ``expected`` (``redo``: what deleting the cache leads to)."""
    try:
        recorded = json.loads(meta.read_text())
    except ValueError as exc:
        raise error(f"{meta}: unreadable {what} sidecar ({exc}); delete it to {redo}") from None
    if recorded != expected:
        raise error(f"{meta}: {what} was made from different inputs: {recorded} vs {expected}")


def read_rgb(path: Path, min_side: int = 0) -> np.ndarray:
    """Read an image file as RGB uint8 [H, W, 3] with the nodes' decoder (a truncated JPEG is
    refused here as it is on a topic); ``min_side`` > 0 lets a large JPEG decode at a reduced
    scale keeping its shorter side >= min_side; raises DatasetError naming the file."""
    from vpr_ros.images import read_image_file

    try:
        return read_image_file(path, min_side)
    except ImageError as exc:
        raise DatasetError(str(exc)) from None


@dataclass(frozen=True)
class FolderPair:
    """A VPR-Bench-style dataset: ``ref/`` (map), ``query/`` and the correct refs per query."""

    root: Path
    ref: list[Path]
    query: list[Path]
    positives: list[set[int]]
    notes: tuple[str, ...] = ()


def read_vpr_bench(root: str | Path) -> FolderPair:
    """Read ``ref/``, ``query/`` and ``ground_truth.csv`` (query_index, space-separated ref indices).

    Without ground_truth.csv, query i matches refs i-2..i+2 (sequence convention).
    """
    root = Path(root)
    ref, query = list_images(root / "ref"), list_images(root / "query")
    gt_path = root / "ground_truth.csv"
    if not gt_path.is_file():
        pos = [set(range(max(0, i - 2), min(len(ref), i + 3))) for i in range(len(query))]
        return FolderPair(root, ref, query, pos)
    positives: list[set[int]] = [set() for _ in query]
    seen: dict[int, int] = {}
    notes: list[str] = []
    try:
        rows = list(csv.reader(read_text(gt_path, "ground truth table", DatasetError).splitlines()))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{gt_path}: not a CSV text file ({exc})") from None
    first = 1
    if rows and rows[0] and not rows[0][0].strip().lstrip("-").isdigit():
        first = 2  # a header row (e.g. 'query_index,matching_ref_indices')
        if len(rows[0]) < 2:
            raise DatasetError(f"{gt_path}: header {rows[0]} has fewer than 2 columns "
                               "(expected 'query_index,matching_ref_indices')")
        rows = rows[1:]
    elif rows:
        notes.append(f"{gt_path}: no header row; row 1 is read as data")
    for row_no, row in enumerate(rows, start=first):
        if not row or not "".join(row).strip():
            continue
        try:
            q = int(row[0])
            refs = {int(v) for v in row[1].split()}
        except (ValueError, IndexError):
            raise DatasetError(f"{gt_path}: row {row_no} is malformed (expected 'query_index,ref ref ...'): "
                               f"{row}") from None
        if not 0 <= q < len(query) or any(not 0 <= r < len(ref) for r in refs):
            raise DatasetError(f"{gt_path}: row {row_no} names an index outside the "
                               f"{len(query)} queries / {len(ref)} references: {row}")
        if q in seen:
            raise DatasetError(f"{gt_path}: rows {seen[q]} and {row_no} both give query {q}")
        seen[q] = row_no
        positives[q] = refs
    missing = [i for i in range(len(query)) if i not in seen]
    if missing:
        notes.append(f"{gt_path}: {len(missing)} of {len(query)} queries have no row (first: "
                     f"{', '.join(map(str, missing[:5]))}); they count as queries without a correct reference")
    return FolderPair(root, ref, query, positives, tuple(notes))


def utm_from_name(path: Path) -> tuple[float, float]:
    """(easting, northing) from a gmberton-style name ``@<utm_east>@<utm_north>@...@.jpg``."""
    parts = path.name.split("@")
    try:
        return float(parts[1]), float(parts[2])
    except (IndexError, ValueError):
        raise DatasetError(f"{path}: name has no '@utm_east@utm_north@' coordinates") from None


def read_poses_csv(path: str | Path) -> dict[str, tuple[float, float, float, float]]:
    """Poses CSV with header ``image,x,y[,yaw][,stamp]`` -> {image name: (x, y, yaw, stamp)}."""
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"{p}: poses file not found")
    out: dict[str, tuple[float, float, float, float]] = {}
    first_row: dict[str, int] = {}
    with io.StringIO(read_text(p, "poses file", DatasetError), newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"image", "x", "y"} - set(reader.fieldnames or [])
        if missing:
            raise DatasetError(f"{p}: missing column(s) {', '.join(sorted(missing))} (header: {reader.fieldnames})")
        for row_no, row in enumerate(reader, start=2):
            try:
                vals = (float(row["x"]), float(row["y"]), float(row.get("yaw") or 0.0),
                        float(row.get("stamp") or (row_no - 2)))
            except ValueError:
                raise DatasetError(f"{p}: row {row_no} has a non-numeric value: {row}") from None
            if not all(np.isfinite(vals)):
                raise DatasetError(f"{p}: row {row_no} has NaN/inf values: {row}")
            if row["image"] in out:
                raise DatasetError(f"{p}: row {row_no} gives a second pose for image '{row['image']}' "
                                   f"(first at row {first_row[row['image']]}); list each image once")
            out[row["image"]] = vals
            first_row[row["image"]] = row_no
    return out


LAYOUTS = ("auto", "gmberton", "vpr_bench", "sequence")


@dataclass(frozen=True)
class EvalDataset:
    """Database and query images with the correct database ids of each query."""

    name: str
    layout: str
    database: list[Path]
    queries: list[Path]
    positives: list[set[int]]
    notes: tuple[str, ...] = ()   # things the user should know (printed by vpr_ros_eval)


def read_gmberton(root: str | Path, radius: float = 25.0) -> EvalDataset:
    """``database/`` and ``queries/`` with ``@utm_east@utm_north@...@.jpg`` names (the
    deep-visual-geo-localization-benchmark layout); positives within ``radius`` metres.
    ``images/test/{database,queries}`` under ``root`` is found too."""
    from vpr_ros.evaluation import positives_within

    root = Path(root)
    base = root / "images" / "test" if (root / "images" / "test" / "database").is_dir() else root
    db, q = list_images(base / "database"), list_images(base / "queries")
    db_xy = np.array([utm_from_name(p) for p in db])
    q_xy = np.array([utm_from_name(p) for p in q])
    return EvalDataset(root.name, "gmberton", db, q, positives_within(q_xy, db_xy, radius))


def read_sequence(root: str | Path, tolerance: int = 2) -> EvalDataset:
    """``ref/`` and ``query/`` as two traversals in frame order; query i matches ref i +- tolerance."""
    from vpr_ros.evaluation import positives_by_index

    root = Path(root)
    ref, query = list_images(root / "ref"), list_images(root / "query")
    if len(ref) != len(query):
        raise DatasetError(f"{root}: a sequence layout pairs query i with ref i, but ref/ has {len(ref)} images "
                           f"and query/ has {len(query)}; add a ground_truth.csv (VPR-Bench layout) instead")
    return EvalDataset(root.name, "sequence", ref, query, positives_by_index(len(query), len(ref), tolerance))


def read_eval_dataset(root: str | Path, layout: str = "auto", radius: float = 25.0,
                      tolerance: int = 2) -> EvalDataset:
    """Read any supported evaluation layout; 'auto' decides from the folder names."""
    root = Path(root)
    if layout not in LAYOUTS:
        raise DatasetError(f"layout '{layout}' is not one of {', '.join(LAYOUTS)}")
    if layout == "auto":
        if (root / "database").is_dir() or (root / "images" / "test" / "database").is_dir():
            layout = "gmberton"
        elif (root / "ref").is_dir() and (root / "ground_truth.csv").is_file():
            layout = "vpr_bench"
        elif (root / "ref").is_dir():
            layout = "sequence"
        else:
            raise DatasetError(f"{root}: no database/+queries/ (gmberton) or ref/+query/ (VPR-Bench, "
                               "sequence) folders")
    if layout == "gmberton":
        return read_gmberton(root, radius)
    if layout == "sequence":
        return read_sequence(root, tolerance)
    pair = read_vpr_bench(root)
    return EvalDataset(root.name, "vpr_bench", pair.ref, pair.query, pair.positives, pair.notes)
