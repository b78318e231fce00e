"""Camera models from files: the ROS ``camera_info`` YAML that ``camera_calibration`` writes (and
``camera_info_manager`` reads), for image folders and bags recorded without CameraInfo.

    image_width: 640
    image_height: 480
    camera_matrix: {rows: 3, cols: 3, data: [fx, 0, cx, 0, fy, cy, 0, 0, 1]}
    distortion_model: plumb_bob
    distortion_coefficients: {rows: 1, cols: 5, data: [k1, k2, p1, p2, k3]}

Only the pinhole part is used: features are matched in the images as they are, so a camera with
strong distortion should be given rectified images (a note says when the coefficients are not 0).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from vpr_ros.config import read_yaml
from vpr_ros.errors import ConfigError, VprError
from vpr_ros.verification.features import CameraIntrinsics


def _matrix(d: dict[str, Any], key: str, rows: int, cols: int, path: Path) -> list[float]:
    m = d.get(key)
    if not isinstance(m, dict) or not isinstance(m.get("data"), list):
        raise ConfigError(f"{path}: '{key}' must be a mapping with rows, cols and data (camera_calibration's layout)")
    data = m["data"]
    if (m.get("rows"), m.get("cols")) != (rows, cols) or len(data) != rows * cols:
        raise ConfigError(f"{path}: '{key}' must be {rows}x{cols} ({rows * cols} values), got rows {m.get('rows')!r}, "
                          f"cols {m.get('cols')!r}, {len(data)} values")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in data):
        raise ConfigError(f"{path}: '{key}' holds a value that is not a finite number: {data!r}")
    return [float(v) for v in data]


def read_camera_info(path: str | Path) -> tuple[CameraIntrinsics, list[str]]:
    """(intrinsics, notes) of a ``camera_info`` YAML file; ConfigError naming the file and key."""
    p = Path(path)
    d = read_yaml(p)
    w, h = d.get("image_width"), d.get("image_height")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (w, h)):
        raise ConfigError(f"{p}: image_width and image_height must be positive integers, got {w!r} and {h!r}")
    k = _matrix(d, "camera_matrix", 3, 3, p)
    try:
        intr = CameraIntrinsics.from_k(k, int(w), int(h))  # type: ignore[arg-type]
    except VprError as exc:
        raise ConfigError(f"{p}: {exc}") from None
    notes = []
    if "distortion_coefficients" in d:
        dist = d["distortion_coefficients"]
        values = dist.get("data") if isinstance(dist, dict) else None
        if not isinstance(values, list) or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            raise ConfigError(f"{p}: distortion_coefficients.data must be a list of finite numbers")
        if any(abs(v) > 1e-9 for v in values):
            notes.append(f"{p}: distortion ({d.get('distortion_model', '?')}) is not corrected: features are matched "
                         "in the images as they are (give rectified images for metric poses)")
    return intr, notes
