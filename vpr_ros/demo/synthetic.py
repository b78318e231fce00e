"""Procedurally generated two-traversal place sequence for the demo and tests.

A long "street façade" panorama is drawn from a seed (coloured walls, windows, doors,
signs, stripes, noise texture). A camera moving along it sees a crop of the panorama.
The first traversal is clean; the second revisits the same positions with viewpoint
jitter (shift, zoom, roll), a lighting change (gain, gamma, colour cast) and sensor noise.
No data is downloaded; the same seed always gives the same images.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vpr_ros.geometry import Pose, planar_pose

PX_PER_M = 40  # panorama pixels per metre of travel


@dataclass(frozen=True)
class Traversal:
    """Images [N] of RGB uint8 [H, W, 3], their stamps (s) and ground-truth poses."""

    images: list[np.ndarray]
    stamps: list[float]
    poses: list[Pose]
    positions: np.ndarray  # [N] metres along the path


def _panorama(length_m: float, height: int, rng: np.random.Generator) -> np.ndarray:
    import cv2

    w = int(length_m * PX_PER_M) + 400
    pano = np.zeros((height, w, 3), np.uint8)
    x = 0
    while x < w:  # buildings of random width and colour
        bw = int(rng.integers(60, 180))
        base = rng.integers(40, 230, 3)
        pano[:, x:x + bw] = base
        grad = np.linspace(0.75, 1.15, height)[:, None, None]
        pano[:, x:x + bw] = np.clip(pano[:, x:x + bw] * grad, 0, 255)
        for _ in range(int(rng.integers(1, 5))):  # windows / doors / signs
            ww, wh = int(rng.integers(10, 40)), int(rng.integers(10, height // 2))
            wx, wy = x + int(rng.integers(0, max(1, bw - ww))), int(rng.integers(5, height - wh - 5))
            col = tuple(int(c) for c in rng.integers(0, 255, 3))
            if rng.random() < 0.7:
                cv2.rectangle(pano, (wx, wy), (wx + ww, wy + wh), col, -1)
                cv2.rectangle(pano, (wx, wy), (wx + ww, wy + wh), (20, 20, 20), 2)
            else:
                cv2.circle(pano, (wx + ww // 2, wy + wh // 2), max(ww, wh) // 2, col, -1)
        if rng.random() < 0.5:  # stripes
            col = tuple(int(c) for c in rng.integers(0, 255, 3))
            for sy in range(int(rng.integers(0, 10)), height, int(rng.integers(8, 20))):
                cv2.line(pano, (x, sy), (x + bw, sy), col, 1)
        x += bw
    texture = rng.normal(0, 6, pano.shape)
    return np.clip(pano + texture, 0, 255).astype(np.uint8)


def _view(pano: np.ndarray, pos_m: float, size: tuple[int, int], shift_px: float = 0.0,
          zoom: float = 1.0, roll_deg: float = 0.0) -> np.ndarray:
    import cv2

    h, w = size
    cx = 200 + pos_m * PX_PER_M + shift_px
    cy = pano.shape[0] / 2
    scale = (pano.shape[0] / h) / zoom  # panorama pixels per image pixel
    m = cv2.getRotationMatrix2D((w / 2, h / 2), roll_deg, 1.0)  # image rotation about its centre
    a = np.vstack([m, [0, 0, 1]])
    to_pano = np.array([[scale, 0, cx - scale * w / 2], [0, scale, cy - scale * h / 2], [0, 0, 1]])
    full = (to_pano @ np.linalg.inv(a))[:2]
    return cv2.warpAffine(pano, full, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REFLECT)


def _degrade(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    gain = rng.uniform(0.55, 0.85)
    gamma = rng.uniform(0.8, 1.25)
    cast = rng.uniform(0.9, 1.1, 3)
    x = (img.astype(np.float32) / 255.0) ** gamma * gain * cast
    x = x * 255.0 + rng.normal(0, 8.0, img.shape)
    return np.clip(x, 0, 255).astype(np.uint8)


def make_traversals(n_places: int = 60, spacing_m: float = 1.0, size: tuple[int, int] = (120, 160),
                    seed: int = 7, revisit_start: float = 1000.0, frame_period: float = 0.5
                    ) -> tuple[Traversal, Traversal]:
    """Two traversals of the same ``n_places`` positions ``spacing_m`` apart.

    The first starts at t = 0; the second at ``revisit_start`` seconds (so that every
    revisit is a loop-closure candidate beyond the 30 s minimum separation).
    """
    rng = np.random.default_rng(seed)
    pano = _panorama(n_places * spacing_m + 10, size[0] * 2, rng)
    pos = np.arange(n_places) * spacing_m
    first = [_view(pano, p, size) for p in pos]
    second = [_degrade(_view(pano, p, size, shift_px=rng.uniform(-10, 10), zoom=rng.uniform(0.92, 1.08),
                             roll_deg=rng.uniform(-4, 4)), rng) for p in pos]
    poses = [planar_pose(p, 0.0) for p in pos]
    t1 = [i * frame_period for i in range(n_places)]
    t2 = [revisit_start + i * frame_period for i in range(n_places)]
    return Traversal(first, t1, poses, pos), Traversal(second, t2, poses, pos)


def place_views(n_places: int, views: int, size: int = 224, seed: int = 1, spacing_m: float = 6.0) -> np.ndarray:
    """[n_places, views, size, size, 3] uint8: places ``spacing_m`` apart along one procedural
    street; view 0 is clean, the others have viewpoint jitter, lighting change and noise."""
    rng = np.random.default_rng(seed)
    pano = _panorama(n_places * spacing_m + 10, 2 * size, rng)
    out = np.zeros((n_places, views, size, size, 3), np.uint8)
    for i in range(n_places):
        for v in range(views):
            img = _view(pano, i * spacing_m, (size, size), shift_px=rng.uniform(-0.3, 0.3) * PX_PER_M,
                        zoom=rng.uniform(0.85, 1.15), roll_deg=rng.uniform(-5, 5))
            out[i, v] = img if v == 0 else _degrade(img, rng)
    return out


def write_gsv_cities(root: str | Path, views: np.ndarray, city: str = "Synthville",
                     first_place: int = 0) -> None:
    """Write ``views`` [P, K, H, W, 3] as one city of a GSV-Cities tree (Dataframes/<city>.csv +
    Images/<city>/...), with the dataset's file naming; positions are made up."""
    import csv

    import cv2

    from vpr_ros.training.gsv_cities import GSV_COLUMNS, gsv_image_name

    root = Path(root)
    (root / "Dataframes").mkdir(parents=True, exist_ok=True)
    folder = root / "Images" / city
    folder.mkdir(parents=True, exist_ok=True)
    with open(root / "Dataframes" / f"{city}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(GSV_COLUMNS))
        w.writeheader()
        for p in range(views.shape[0]):
            for k in range(views.shape[1]):
                row = {"place_id": str(first_place + p), "year": str(2010 + k), "month": str(1 + k),
                       "northdeg": str(90 * k), "city_id": city, "lat": f"{45.0 + p * 1e-4:.6f}",
                       "lon": f"{7.0 + k * 1e-5:.6f}", "panoid": f"pano{p:04d}x{k}"}
                w.writerow(row)
                cv2.imwrite(str(folder / gsv_image_name(row)), cv2.cvtColor(views[p, k], cv2.COLOR_RGB2BGR))
