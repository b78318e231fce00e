"""Turning raw camera data into RGB arrays, with clear errors for bad input: the one decoder used
by the nodes, the bag builder and evaluation.

ROS-free: works on the fields of ``sensor_msgs/Image`` / ``CompressedImage`` (or any object with
them, including rosbags messages) and on image files. Colour conversions are done by
``rosbags-image`` (OpenCV underneath); this module decides what is a camera image at all.

* :data:`CAMERA_ENCODINGS` are accepted as camera images.
* :data:`DEPTH_ENCODINGS` (``16UC1`` millimetres, ``32FC1`` metres) are refused as camera images
  and accepted by :func:`depth_to_metres` only, where depth is expected.
* Everything else (signed and float encodings such as ``8SC1``, ``16SC1``, ``32SC1``, ``64FC1``,
  multi-channel float, planar YUV) is refused with the reason.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vpr_ros.errors import ImageError

#: Largest accepted image, in pixels (a 64-megapixel frame is surely a mistake).
MAX_PIXELS = 64_000_000

#: encoding -> (numpy dtype, channels, encoding handed to the colour conversion)
CAMERA_ENCODINGS: dict[str, tuple[str, int, str]] = {
    "rgb8": ("uint8", 3, "rgb8"), "bgr8": ("uint8", 3, "bgr8"),
    "rgba8": ("uint8", 4, "rgba8"), "bgra8": ("uint8", 4, "bgra8"),
    "rgb16": ("uint16", 3, "rgb16"), "bgr16": ("uint16", 3, "bgr16"),
    "rgba16": ("uint16", 4, "rgba16"), "bgra16": ("uint16", 4, "bgra16"),
    "mono8": ("uint8", 1, "mono8"), "mono16": ("uint16", 1, "mono16"),
    "8UC1": ("uint8", 1, "mono8"), "8UC3": ("uint8", 3, "bgr8"), "8UC4": ("uint8", 4, "bgra8"),
    **{f"bayer_{p}{b}": ("uint8" if b == 8 else "uint16", 1, f"bayer_{p}{b}")
       for p in ("rggb", "bggr", "gbrg", "grbg") for b in (8, 16)},
    "uyvy": ("uint8", 2, "uyvy"), "yuv422": ("uint8", 2, "yuv422"),
    "yuyv": ("uint8", 2, "yuyv"), "yuv422_yuy2": ("uint8", 2, "yuv422_yuy2"),
}
#: depth encodings -> (numpy dtype, metres per unit)
DEPTH_ENCODINGS: dict[str, tuple[str, float]] = {"16UC1": ("uint16", 1e-3), "32FC1": ("float32", 1.0)}


def _why_not_camera(encoding: str) -> str:
    if encoding in DEPTH_ENCODINGS:
        unit = "millimetres" if encoding == "16UC1" else "metres"
        return (f"encoding '{encoding}' is a depth image ({unit}), not a camera image; "
                "publish the camera's colour or mono stream here (depth goes to depth_topic)")
    if encoding[:2] in ("8S", "16", "32", "64") or encoding[:3] in ("16S", "32S", "32F", "64F"):
        return f"encoding '{encoding}' holds signed or floating-point values, not a camera image"
    return (f"unsupported image encoding '{encoding}'; accepted: " + ", ".join(sorted(CAMERA_ENCODINGS)))


def _rows(encoding: str, height: int, width: int, step: int, is_bigendian: bool, data: Any,
          dtype: np.dtype, nchan: int) -> np.ndarray:
    """The pixel array [H, W(, C)] of raw image fields, after checking sizes."""
    if height <= 0 or width <= 0:
        raise ImageError(f"empty image: {width}x{height} (encoding '{encoding}')")
    if height * width > MAX_PIXELS:
        raise ImageError(f"image too large: {width}x{height} exceeds {MAX_PIXELS} pixels")
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
    return img.reshape((height, width) if nchan == 1 else (height, width, nchan))


def _convert(img: np.ndarray, encoding: str) -> np.ndarray:
    from rosbags.image.image import convert_color

    if img.dtype == np.uint16 and encoding in ("mono16",):
        img, encoding = (img >> 8).astype(np.uint8), "mono8"
    if encoding == "mono8":
        return np.ascontiguousarray(np.repeat(img[:, :, None], 3, axis=2))
    try:
        out = convert_color(img, encoding, "rgb8")
    except Exception as exc:  # noqa: BLE001 - rosbags/OpenCV raise several types for bad input
        raise ImageError(f"cannot convert encoding '{encoding}' to rgb8: {exc}") from None
    if out.dtype == np.uint16:
        out = (out >> 8).astype(np.uint8)
    return np.ascontiguousarray(out)


def raw_to_rgb(encoding: str, height: int, width: int, step: int, is_bigendian: bool,
               data: Any) -> np.ndarray:
    """Decode the fields of a ``sensor_msgs/Image`` into RGB uint8 [H, W, 3] (16-bit scaled to 8).

    Accepts :data:`CAMERA_ENCODINGS`; raises ImageError naming the problem otherwise.
    """
    if encoding not in CAMERA_ENCODINGS:
        raise ImageError(_why_not_camera(encoding))
    typestr, nchan, convert_as = CAMERA_ENCODINGS[encoding]
    img = _rows(encoding, height, width, step, is_bigendian, data, np.dtype(typestr), nchan)
    return _convert(img, convert_as)


def depth_to_metres(encoding: str, height: int, width: int, step: int, is_bigendian: bool,
                    data: Any) -> np.ndarray:
    """Decode a depth image (``16UC1`` mm or ``32FC1`` m) into float32 metres [H, W]; invalid
    pixels (0, NaN, inf, negative) become NaN."""
    if encoding not in DEPTH_ENCODINGS:
        raise ImageError(f"depth image: encoding '{encoding}' is not a depth encoding "
                         f"({', '.join(DEPTH_ENCODINGS)})")
    typestr, scale = DEPTH_ENCODINGS[encoding]
    d = _rows(encoding, height, width, step, is_bigendian, data, np.dtype(typestr), 1).astype(np.float32) * scale
    d[~np.isfinite(d) | (d <= 0)] = np.nan
    return d


def check_image_bytes(fmt: str, raw: bytes) -> None:
    """Cheap checks before decoding: not empty, not a depth stream, JPEG/PNG not truncated."""
    if not raw:
        raise ImageError(f"empty compressed image (format '{fmt}')")
    if "depth" in fmt.lower():
        raise ImageError(f"compressed depth image (format '{fmt}'), not a camera image")
    if raw[:2] == b"\xff\xd8" and not raw.rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise ImageError(f"truncated JPEG: {len(raw)} bytes with no end-of-image marker (format '{fmt}')")
    if raw[:8] == b"\x89PNG\r\n\x1a\n" and b"IEND" not in raw[-16:]:
        raise ImageError(f"truncated PNG: {len(raw)} bytes with no IEND chunk (format '{fmt}')")
    size = encoded_size(raw)
    if size is not None and size[0] * size[1] > MAX_PIXELS:
        raise ImageError(f"image too large: its header says {size[1]}x{size[0]}, over {MAX_PIXELS} pixels "
                         f"(format '{fmt}', {len(raw)} bytes); refused before decoding")


def encoded_size(raw: bytes) -> tuple[int, int] | None:
    """(height, width) from the header of a JPEG, PNG, BMP or WebP (VP8/VP8L/VP8X) file, None for
    other or unreadable data: read before decoding, so a small file that expands to gigabytes (a
    'PNG bomb') is refused without allocating."""
    if raw[:2] == b"\xff\xd8":
        return jpeg_size(raw)
    if raw[:8] == b"\x89PNG\r\n\x1a\n" and raw[12:16] == b"IHDR" and len(raw) >= 24:
        return int.from_bytes(raw[20:24], "big"), int.from_bytes(raw[16:20], "big")
    if raw[:2] == b"BM" and len(raw) >= 26:
        return abs(int.from_bytes(raw[22:26], "little", signed=True)), int.from_bytes(raw[18:22], "little", signed=True)
    if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP" and len(raw) >= 30:
        chunk = raw[12:16]
        if chunk == b"VP8X":
            return 1 + int.from_bytes(raw[27:30], "little"), 1 + int.from_bytes(raw[24:27], "little")
        if chunk == b"VP8L" and len(raw) >= 25:
            bits = int.from_bytes(raw[21:25], "little")
            return 1 + ((bits >> 14) & 0x3FFF), 1 + (bits & 0x3FFF)
        if chunk == b"VP8 ":
            return int.from_bytes(raw[28:30], "little") & 0x3FFF, int.from_bytes(raw[26:28], "little") & 0x3FFF
    return None


_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def jpeg_size(raw: bytes) -> tuple[int, int] | None:
    """(height, width) from a JPEG's frame header, or None when ``raw`` is not a readable JPEG."""
    if raw[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 9 <= len(raw):
        if raw[i] != 0xFF:
            return None
        marker = raw[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        length = int.from_bytes(raw[i + 2:i + 4], "big")
        if marker in _SOF_MARKERS:
            return int.from_bytes(raw[i + 5:i + 7], "big"), int.from_bytes(raw[i + 7:i + 9], "big")
        i += 2 + length
    return None


def _reduced_decode_flag(raw: bytes, min_side: int) -> int:
    """The OpenCV flag that decodes a JPEG at 1/2, 1/4 or 1/8 scale (DCT scaling: much faster)
    while keeping its shorter side >= ``min_side``; full-size colour otherwise."""
    import cv2

    size = jpeg_size(raw) if min_side > 0 else None
    if size is None:
        return int(cv2.IMREAD_COLOR)
    short = min(size)
    for factor, flag in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
                         (2, cv2.IMREAD_REDUCED_COLOR_2)):
        if short // factor >= min_side:
            return int(flag)
    return int(cv2.IMREAD_COLOR)


def compressed_to_rgb(fmt: str, data: Any, min_side: int = 0) -> np.ndarray:
    """Decode a ``sensor_msgs/CompressedImage`` or an image file's bytes (JPEG/PNG...) into RGB
    uint8 [H, W, 3]; truncated JPEG/PNG data is refused. ``min_side`` > 0: a large JPEG may be
    decoded at a reduced scale whose shorter side is still at least ``min_side`` pixels."""
    import cv2

    raw = bytes(data)
    check_image_bytes(fmt, raw)
    flag = _reduced_decode_flag(raw, min_side)
    rgb = getattr(cv2, "IMREAD_COLOR_RGB", None)  # OpenCV >= 4.10: decoded straight to RGB (no swap pass)
    img = cv2.imdecode(np.frombuffer(raw, np.uint8), flag & ~cv2.IMREAD_COLOR | rgb if rgb else flag)
    if img is None:
        raise ImageError(f"cannot decode compressed image (format '{fmt}', {len(raw)} bytes)")
    if img.shape[0] * img.shape[1] > MAX_PIXELS:
        raise ImageError(f"image too large: {img.shape[1]}x{img.shape[0]} exceeds {MAX_PIXELS} pixels")
    return img if rgb else np.ascontiguousarray(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))


def read_image_file(path: str | Path, min_side: int = 0) -> np.ndarray:
    """An image file as RGB uint8 [H, W, 3], through the same checks as a CompressedImage
    (``min_side``: see :func:`compressed_to_rgb`); raises ImageError naming the file."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ImageError(f"{p}: cannot read ({exc.strerror or exc})") from None
    try:
        return compressed_to_rgb(p.suffix.lstrip(".") or "file", data, min_side)
    except ImageError as exc:
        raise ImageError(f"{p}: {exc}") from None


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
