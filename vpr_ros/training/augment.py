"""RandAugment-style augmentation on RGB uint8 [H, W, 3] with OpenCV/numpy (no torchvision).

The 14 operations and magnitude ranges of RandAugment (N ops, magnitude M of 30) as the
D2-VPR/SciceVPR GSV-Cities training uses them (N = 3, M = 9): identity, shear x/y, translate
x/y, rotate, brightness, colour, contrast, sharpness, posterize, solarize, autocontrast,
equalize. Geometric ops fill with black. All randomness comes from the ``rng`` argument.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

MAX_MAGNITUDE = 30


def _affine(img: np.ndarray, m: np.ndarray) -> np.ndarray:
    import cv2

    h, w = img.shape[:2]
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _blend(a: np.ndarray, b: np.ndarray, factor: float) -> np.ndarray:
    """PIL ImageEnhance semantics: b + factor (a - b), rounded and saturated (one OpenCV pass)."""
    import cv2

    return cv2.addWeighted(a, factor, b, 1.0 - factor, 0.0)


def _lut(img: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Per-value (or per-channel [256, 1, 3]) lookup table on uint8."""
    import cv2

    return cv2.LUT(img, table.astype(np.uint8))


def _scale(img: np.ndarray, factor: float) -> np.ndarray:
    """img x factor, rounded and saturated (brightness: a blend with black)."""
    import cv2

    return cv2.convertScaleAbs(img, alpha=factor) if factor >= 0 else np.zeros_like(img)


def _gray(img: np.ndarray) -> np.ndarray:
    import cv2

    return np.repeat(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)


def _shear(img: np.ndarray, v: float, axis: int) -> np.ndarray:
    h, w = img.shape[:2]
    if axis == 0:
        m = np.array([[1, v, -v * h / 2], [0, 1, 0]], np.float32)
    else:
        m = np.array([[1, 0, 0], [v, 1, -v * w / 2]], np.float32)
    return _affine(img, m)


def _translate(img: np.ndarray, v: float, axis: int) -> np.ndarray:
    h, w = img.shape[:2]
    m = np.array([[1, 0, v * w if axis == 0 else 0], [0, 1, v * h if axis == 1 else 0]], np.float32)
    return _affine(img, m)


def _rotate(img: np.ndarray, deg: float) -> np.ndarray:
    import cv2

    h, w = img.shape[:2]
    return _affine(img, cv2.getRotationMatrix2D((w / 2, h / 2), deg, 1.0))


def _contrast(img: np.ndarray, factor: float) -> np.ndarray:
    import cv2

    mean = int(float(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).mean()) + 0.5)
    return _lut(img, np.clip(np.round(mean + factor * (np.arange(256) - mean)), 0, 255))


def _sharpness(img: np.ndarray, factor: float) -> np.ndarray:
    import cv2

    kernel = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / 13.0
    smooth = cv2.filter2D(img, -1, kernel, borderType=cv2.BORDER_REPLICATE)
    smooth[0, :], smooth[-1, :], smooth[:, 0], smooth[:, -1] = img[0, :], img[-1, :], img[:, 0], img[:, -1]
    return _blend(img, smooth, factor)


def _posterize(img: np.ndarray, bits: int) -> np.ndarray:
    mask = np.uint8((0xFF << (8 - bits)) & 0xFF)
    return img & mask


def _autocontrast(img: np.ndarray) -> np.ndarray:
    """Stretch each channel to 0..255 (a channel of one value is left alone)."""
    import cv2

    tables = []
    for c in cv2.split(img):
        lo, hi = (float(v) for v in cv2.minMaxLoc(c)[:2])
        v = np.arange(256, dtype=np.float32)
        tables.append(np.clip((v - lo) * (255.0 / (hi - lo)), 0, 255) if hi > lo else v)
    return _lut(img, np.stack(tables, axis=1)[:, None, :])


def _equalize(img: np.ndarray) -> np.ndarray:
    import cv2

    return np.stack([cv2.equalizeHist(np.ascontiguousarray(img[..., c])) for c in range(3)], axis=2)


def _signed(v: float, rng: np.random.Generator) -> float:
    return -v if rng.random() < 0.5 else v


Op = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]

#: name -> op(img, magnitude fraction in [0, 1], rng)
OPS: dict[str, Op] = {
    "identity": lambda img, m, rng: img,
    "shear_x": lambda img, m, rng: _shear(img, _signed(0.3 * m, rng), 0),
    "shear_y": lambda img, m, rng: _shear(img, _signed(0.3 * m, rng), 1),
    "translate_x": lambda img, m, rng: _translate(img, _signed(0.45 * m, rng), 0),
    "translate_y": lambda img, m, rng: _translate(img, _signed(0.45 * m, rng), 1),
    "rotate": lambda img, m, rng: _rotate(img, _signed(30.0 * m, rng)),
    "brightness": lambda img, m, rng: _scale(img, 1.0 + _signed(0.9 * m, rng)),
    "color": lambda img, m, rng: _blend(img, _gray(img), 1.0 + _signed(0.9 * m, rng)),
    "contrast": lambda img, m, rng: _contrast(img, 1.0 + _signed(0.9 * m, rng)),
    "sharpness": lambda img, m, rng: _sharpness(img, 1.0 + _signed(0.9 * m, rng)),
    "posterize": lambda img, m, rng: _posterize(img, 8 - int(round(4 * m))),
    "solarize": lambda img, m, rng: _lut(img, np.where(np.arange(256) >= 255.0 * (1.0 - m),
                                                      255 - np.arange(256), np.arange(256))),
    "autocontrast": lambda img, m, rng: _autocontrast(img),
    "equalize": lambda img, m, rng: _equalize(img),
}


def rand_augment(img: np.ndarray, rng: np.random.Generator, ops: int = 3, magnitude: int = 9) -> np.ndarray:
    """Apply ``ops`` operations drawn uniformly (with replacement) at strength ``magnitude``/30."""
    names = list(OPS)
    m = magnitude / MAX_MAGNITUDE
    out = np.ascontiguousarray(img)
    for i in rng.integers(0, len(names), ops):
        out = OPS[names[int(i)]](out, m, rng)
    return out
