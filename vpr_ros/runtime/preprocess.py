"""The one preprocessing function used by every backend, node, CLI and training.

RGB uint8 [H, W, 3] -> resize to the model size (area interpolation when shrinking,
which antialiases; bilinear when enlarging) -> /255 -> ImageNet mean/std ->
float32 [3, S, S].
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from vpr_ros.config import IMAGENET_MEAN, IMAGENET_STD
from vpr_ros.images import check_rgb

_MEAN = np.asarray(IMAGENET_MEAN, np.float32) * 255.0
_INV_STD = 1.0 / (np.asarray(IMAGENET_STD, np.float32) * 255.0)


def resize_square(img: np.ndarray, size: int) -> np.ndarray:
    """[H, W, 3] -> [size, size, 3]: area interpolation when shrinking, bilinear when enlarging."""
    import cv2

    h, w = img.shape[:2]
    if (h, w) == (size, size):
        return img
    interp = cv2.INTER_AREA if (h > size or w > size) else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)


def preprocess(rgb: np.ndarray, size: int) -> np.ndarray:
    """One RGB image [H, W, 3] (uint8 or float 0..255) -> float32 [3, size, size]."""
    img = resize_square(check_rgb(rgb), size)
    x = (img.astype(np.float32) - _MEAN) * _INV_STD
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess_batch(images: Sequence[np.ndarray], size: int) -> np.ndarray:
    """Several RGB images -> float32 [N, 3, size, size]."""
    if len(images) == 0:
        return np.zeros((0, 3, size, size), np.float32)
    return np.stack([preprocess(im, size) for im in images])
