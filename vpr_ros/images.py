"""Turning raw camera data into RGB arrays, with clear errors for bad input.

ROS-free: works on the fields of ``sensor_msgs/Image`` / ``CompressedImage`` (or any
object with them, including rosbags messages). Encoding conversions are done by
``rosbags-image`` (OpenCV underneath); this module only validates and normalises.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from vpr_ros.errors import ImageError

#: Largest accepted image, in pixels (a 64-megapixel frame is surely a mistake).
MAX_PIXELS = 64_000_000


def _convert(img: np.ndarray, encoding: str) -> np.ndarray:
    from rosbags.image import ImageError as RbImageError
    from rosbags.image.image import convert_color

    if img.dtype == np.uint16 and encoding.startswith(("16UC", "mono16")):
        img = (img >> 8).astype(np.uint8)
        encoding = "mono8" if img.ndim == 2 else "8UC3"
    if encoding in ("8UC1", "mono8") or (img.ndim == 2 and not encoding.startswith("bayer")):
        return np.ascontiguousarray(np.repeat(img[:, :, None], 3, axis=2)).astype(np.uint8, copy=False)
    if encoding == "8UC3":
        encoding = "bgr8"
    try:
        out = convert_color(img, encoding, "rgb8")
    except (RbImageError, Exception) as exc:  # rosbags raises several types for bad input
        raise ImageError(f"cannot convert encoding '{encoding}' to rgb8: {exc}") from None
    if out.dtype == np.uint16:
        out = (out >> 8).astype(np.uint8)
    return np.ascontiguousarray(out)


def raw_to_rgb(encoding: str, height: int, width: int, step: int, is_bigendian: bool,
               data: Any) -> np.ndarray:
    """Decode the fields of a ``sensor_msgs/Image`` into RGB uint8 [H, W, 3].

    Supports the encodings rosbags-image knows (rgb/bgr/rgba/bgra 8/16, mono8/16,
    bayer_*8/16, 8UC1/3, 16UC1); raises ImageError naming the problem otherwise.
    """
    from rosbags.image import ImageFormatError
    from rosbags.image.image import to_cvtype

    if height <= 0 or width <= 0:
        raise ImageError(f"empty image: {width}x{height} (encoding '{encoding}')")
    if height * width > MAX_PIXELS:
        raise ImageError(f"image too large: {width}x{height} exceeds {MAX_PIXELS} pixels")
    try:
        _, _, typestr, nchan = to_cvtype(encoding)
    except (ImageFormatError, KeyError):
        raise ImageError(f"unsupported image encoding '{encoding}'") from None
    dtype = np.dtype(typestr)
    row = width * nchan * dtype.itemsize
    buf = np.frombuffer(bytes(data) if not isinstance(data, (bytes, np.ndarray)) else data, np.uint8)
    if step < row:
        raise ImageError(f"step {step} is smaller than one row of {width} px '{encoding}' ({row} bytes)")
    if buf.size < step * (height - 1) + row:
        raise ImageError(f"image data too short: {buf.size} bytes for {height} rows of step {step} "
                         f"('{encoding}', {width}x{height})")
    if buf.size < step * height:  # the last row may legally omit its padding
        buf = np.concatenate([buf, np.zeros(step * height - buf.size, np.uint8)])
    rows = buf[: step * height].reshape(height, step)[:, :row]
    img = np.ascontiguousarray(rows).view(dtype.newbyteorder(">" if is_bigendian else "<"))
    img = img.astype(dtype.newbyteorder("="), copy=False)
    img = img.reshape((height, width) if nchan == 1 else (height, width, nchan))
    return _convert(img, encoding)


def compressed_to_rgb(fmt: str, data: Any) -> np.ndarray:
    """Decode a ``sensor_msgs/CompressedImage`` (JPEG/PNG) into RGB uint8 [H, W, 3]."""
    import cv2

    raw = bytes(data)
    if not raw:
        raise ImageError(f"empty compressed image (format '{fmt}')")
    if raw[:2] == b"\xff\xd8" and not raw.rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise ImageError(f"truncated JPEG: {len(raw)} bytes with no end-of-image marker (format '{fmt}')")
    if raw[:8] == b"\x89PNG\r\n\x1a\n" and b"IEND" not in raw[-16:]:
        raise ImageError(f"truncated PNG: {len(raw)} bytes with no IEND chunk (format '{fmt}')")
    img = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ImageError(f"cannot decode compressed image (format '{fmt}', {len(raw)} bytes)")
    return np.ascontiguousarray(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))


def check_rgb(img: np.ndarray, name: str = "image") -> np.ndarray:
    """Validate an RGB array [H, W, 3] (uint8, or float in [0, 255] without NaN)."""
    if not isinstance(img, np.ndarray):
        raise ImageError(f"{name}: expected a numpy array, got {type(img).__name__}")
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ImageError(f"{name}: expected shape [H, W, 3], got {list(img.shape)}")
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise ImageError(f"{name}: empty image {list(img.shape)}")
    if img.shape[0] * img.shape[1] > MAX_PIXELS:
        raise ImageError(f"{name}: too large {list(img.shape)} (> {MAX_PIXELS} pixels)")
    if img.dtype != np.uint8:
        if not np.issubdtype(img.dtype, np.floating):
            raise ImageError(f"{name}: dtype {img.dtype} not supported (uint8 or float)")
        if not np.isfinite(img).all():
            raise ImageError(f"{name}: contains NaN or infinite values")
    return img
