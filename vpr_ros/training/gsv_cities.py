"""Training image sets: the GSV-Cities layout (places) and plain image folders (distillation).

GSV-Cities: ``Dataframes/<City>.csv`` with the columns ``place_id, year, month, northdeg,
city_id, lat, lon, panoid`` (one row per image) and ``Images/<City>/<name>.jpg`` where
``<name>`` is ``<city_id>_<place_id:07d>_<year:04d>_<month:02d>_<northdeg:03d>_<lat>_<lon>_<panoid>``.
Every problem raises DatasetError naming the file and row, before any training starts.
"""
from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from vpr_ros.datasets import IMAGE_SUFFIXES, EvalDataset, image_files
from vpr_ros.errors import DatasetError
from vpr_ros.files import read_text

GSV_COLUMNS = ("place_id", "year", "month", "northdeg", "city_id", "lat", "lon", "panoid")
_INT_COLUMNS = ("place_id", "year", "month", "northdeg")
_FLOAT_COLUMNS = ("lat", "lon")


@dataclass(frozen=True)
class PlaceImages:
    """Images grouped by place: ``paths`` [N], ``labels`` int64 [N] (dense place ids 0..P-1),
    ``place_city`` int64 [P] (index of each place's city, in reading order; empty if unknown)."""

    paths: list[Path]
    labels: np.ndarray
    source: str
    place_city: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def num_places(self) -> int:
        return int(self.labels.max()) + 1 if len(self.labels) else 0

    def place_members(self) -> list[np.ndarray]:
        """Image indices of every place, by label."""
        order = np.argsort(self.labels, kind="stable")
        bounds = np.searchsorted(self.labels[order], np.arange(self.num_places + 1))
        return [order[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def gsv_image_name(row: dict[str, str]) -> str:
    """File name of a GSV-Cities image from its CSV row (the dataset's naming scheme)."""
    return (f"{row['city_id']}_{int(row['place_id']):07d}_{int(row['year']):04d}_{int(row['month']):02d}_"
            f"{int(float(row['northdeg'])):03d}_{row['lat']}_{row['lon']}_{row['panoid']}.jpg")


def _check_row(csv_path: Path, line: int, row: dict[str, str]) -> None:
    for col in GSV_COLUMNS:
        if not (row.get(col) or "").strip():
            raise DatasetError(f"{csv_path}: row {line}: column '{col}' is empty")
    for col in _INT_COLUMNS:
        try:
            int(float(row[col]))
        except (ValueError, OverflowError):  # 'x', 'nan', 'inf'
            raise DatasetError(f"{csv_path}: row {line}: column '{col}' is not a number: {row[col]!r}") from None
    for col in _FLOAT_COLUMNS:
        try:
            ok = math.isfinite(float(row[col]))
        except ValueError:
            ok = False
        if not ok:
            raise DatasetError(f"{csv_path}: row {line}: column '{col}' is not a finite number: {row[col]!r}")


def _read_city(root: Path, csv_path: Path, check_images: bool) -> list[tuple[int, Path, int]]:
    """(place_id, image path, CSV line) of every row of one city's CSV."""
    with io.StringIO(read_text(csv_path, "GSV-Cities table", DatasetError), newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in GSV_COLUMNS if c not in header]
        if missing:
            raise DatasetError(f"{csv_path}: missing column(s) {', '.join(missing)} (header: {', '.join(header)})")
        rows = list(enumerate(reader, start=2))
    if not rows:
        raise DatasetError(f"{csv_path}: no rows")
    out = []
    listed: dict[Path, set[str]] = {}
    for line, row in rows:
        _check_row(csv_path, line, row)
        folder = root / "Images" / row["city_id"]
        path = folder / gsv_image_name(row)
        if check_images:
            if folder not in listed:
                listed[folder] = set(os.listdir(folder)) if folder.is_dir() else set()
            if path.name not in listed[folder]:
                alt = path.with_name(path.name.replace(f"_{row['lat']}_{row['lon']}_",
                                                       f"_{float(row['lat'])}_{float(row['lon'])}_"))
                if alt.name not in listed[folder]:
                    raise DatasetError(f"{csv_path}: row {line}: image not found: {path}")
                path = alt
        out.append((int(float(row["place_id"])), path, line))
    return out


def read_gsv_cities(root: str | Path, cities: Sequence[str] = (), min_per_place: int = 4,
                    check_images: bool = True) -> PlaceImages:
    """Read a GSV-Cities tree; places are unique per (city CSV, place_id).

    Raises DatasetError for a missing Dataframes folder or city, missing columns, malformed
    values, missing image files, and places with fewer than ``min_per_place`` images.
    """
    root = Path(root)
    frames = root / "Dataframes"
    if not frames.is_dir():
        raise DatasetError(f"{root}: no Dataframes/ folder (GSV-Cities layout: Dataframes/<City>.csv + Images/<City>/)")
    if cities:
        csvs = [frames / f"{c}.csv" for c in cities]
        for p in csvs:
            if not p.is_file():
                raise DatasetError(f"{p}: city CSV not found")
    else:
        csvs = sorted(frames.glob("*.csv"))
        if not csvs:
            raise DatasetError(f"{frames}: no <City>.csv files")
    paths: list[Path] = []
    labels: list[int] = []
    place_city: list[int] = []
    label = 0
    for city_index, csv_path in enumerate(csvs):
        by_place: dict[int, list[tuple[Path, int]]] = {}
        for place, path, line in _read_city(root, csv_path, check_images):
            by_place.setdefault(place, []).append((path, line))
        for place in sorted(by_place):
            members = by_place[place]
            if len(members) < min_per_place:
                lines = ", ".join(str(line) for _, line in members)
                raise DatasetError(f"{csv_path}: place {place} has {len(members)} image(s) (row(s) {lines}), "
                                   f"fewer than images_per_place={min_per_place}")
            paths.extend(p for p, _ in members)
            labels.extend([label] * len(members))
            place_city.append(city_index)
            label += 1
    return PlaceImages(paths, np.asarray(labels, np.int64), str(root), np.asarray(place_city, np.int64))


def read_image_folders(folders: Sequence[str | Path]) -> list[Path]:
    """Every image under the folders (recursive, sorted); DatasetError naming an empty/missing folder."""
    out: list[Path] = []
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise DatasetError(f"{folder}: image folder not found")
        found = image_files(folder.rglob("*"))
        if not found:
            raise DatasetError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder or below")
        out.extend(found)
    if not out:
        raise DatasetError("no image folders given (data.image_folders)")
    return out


def split_places(data: PlaceImages, holdout: int, seed: int) -> tuple[PlaceImages, EvalDataset | None]:
    """Hold out ``holdout`` whole places as a validation set (query = a place's 2nd image,
    database = its 1st); the rest stays for training. ``holdout`` 0 returns (data, None)."""
    if holdout <= 0:
        return data, None
    if holdout >= data.num_places:
        raise DatasetError(f"{data.source}: cannot hold out {holdout} of {data.num_places} places for validation")
    members = data.place_members()
    val = set(np.random.default_rng([seed, 7]).choice(data.num_places, holdout, replace=False).tolist())
    keep = [i for place in range(data.num_places) if place not in val for i in members[place]]
    remap = {old: new for new, old in enumerate(sorted(set(range(data.num_places)) - val))}
    kept_places = sorted(set(range(data.num_places)) - val)
    train = PlaceImages([data.paths[i] for i in keep],
                        np.asarray([remap[int(data.labels[i])] for i in keep], np.int64), data.source,
                        data.place_city[kept_places] if len(data.place_city) else data.place_city)
    val_sorted = sorted(val)
    database = [data.paths[members[p][0]] for p in val_sorted]
    queries = [data.paths[members[p][1]] for p in val_sorted]
    return train, EvalDataset(f"{Path(data.source).name}-holdout{holdout}", "holdout", database, queries,
                              [{i} for i in range(len(val_sorted))])
